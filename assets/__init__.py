"""Asset and asset-check declarations: thin, calling into pipelines/."""

from assets.datasets import (
    consultant_outcomes_window,
    fft_results,
    linkage_coverage,
    linked_episodes_work,
    quality_reports,
)
from assets.ingest import (
    fft_bronze,
    fft_current,
    gp_bronze,
    hes_apc_bronze,
    landing_scan,
    reference_data,
    sus_apc_bronze,
    sus_apc_current,
)
from assets.publish import feedback_packs, published, release_candidate, revisions, submissions

UNPARTITIONED = [landing_scan, reference_data, hes_apc_bronze]
PERIOD_INGEST = [gp_bronze, sus_apc_bronze, fft_bronze, sus_apc_current, fft_current]
PERIOD_LINK = [linked_episodes_work]
PERIOD_OUTPUTS = [linkage_coverage, fft_results, consultant_outcomes_window, quality_reports, release_candidate, published,
                  revisions]
LEDGER = [submissions, feedback_packs]
ALL_ASSETS = UNPARTITIONED + PERIOD_INGEST + PERIOD_LINK + PERIOD_OUTPUTS + LEDGER
