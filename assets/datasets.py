"""From the current views to the datasets of outputs.md (staged in the warehouse,
unsuppressed; disclosure control and publishing are in assets/publish.py)."""

import dagster as dg

from assets.ingest import _md, fft_current, gp_bronze, sus_apc_current
from pipelines import stages
from pipelines.partitions import period_partitions
from pipelines.resources import CareDataConfig


def _specs(names, deps):
    return [dg.AssetSpec(n, description=stages.describe(n), deps=deps) for n in names]


# Linkage uses each practice's newest extract, whatever its month: every GP partition.
@dg.asset(group_name="linkage", partitions_def=period_partitions, pool="caredata_heavy",
          deps=[sus_apc_current, dg.AssetDep(gp_bronze, partition_mapping=dg.AllPartitionMapping())],
          description="SUS episodes of the period linked to GP registrations (five match ranks), internal.")
def linked_episodes_work(context: dg.AssetExecutionContext, caredata: CareDataConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=_md(stages.link(caredata.settings(), context.partition_key)))


@dg.multi_asset(group_name="linkage", partitions_def=period_partitions,
                specs=_specs(stages.LINKAGE_DATASETS, [linked_episodes_work]))
def linkage_coverage(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.linkage_outputs(caredata.settings(), context.partition_key)
    for name in stages.LINKAGE_DATASETS:
        yield dg.MaterializeResult(asset_key=name, metadata=_md(report[name]))


@dg.multi_asset(group_name="fft", partitions_def=period_partitions,
                specs=_specs(stages.FFT_DATASETS, [fft_current, linked_episodes_work]))
def fft_results(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.fft_outputs(caredata.settings(), context.partition_key)
    for name in stages.FFT_DATASETS:
        yield dg.MaterializeResult(asset_key=name, metadata=_md(report[name]))


# Outcomes look back over a 36-month window (outcomes.window_months): the stage reads the
# window's linked episodes from the warehouse itself, whichever months of it have data. The
# periods are dynamic partitions (any month), which a time-window mapping cannot map, so
# the dependency is on the period's own linkage: the runner links every period before it
# computes any period's outcomes, and a backfill should run forward to the latest period.
@dg.multi_asset(group_name="outcomes", partitions_def=period_partitions, pool="caredata_heavy",
                specs=_specs(stages.OUTCOME_DATASETS, [linked_episodes_work]))
def consultant_outcomes_window(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.outcome_outputs(caredata.settings(), context.partition_key)
    for name in stages.OUTCOME_DATASETS:
        yield dg.MaterializeResult(asset_key=name, metadata=_md(report[name]))


@dg.multi_asset(group_name="quality", partitions_def=period_partitions,
                specs=_specs(stages.QUALITY_DATASETS,
                             ["gp_bronze", "sus_apc_bronze", "fft_bronze", "hes_apc_bronze", sus_apc_current, fft_current,
                              linked_episodes_work]))  # its PROCEDURE_AGE_UNKNOWN counts
def quality_reports(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.quality_outputs(caredata.settings(), context.partition_key)
    for name in stages.QUALITY_DATASETS:
        yield dg.MaterializeResult(asset_key=name, metadata=_md(report[name]))
