"""Landing zone to warehouse: ledger scan, reference data, per-feed ingest and validation,
and the current views the submission protocols define."""


import dagster as dg

from pipelines import drift, stages
from pipelines.partitions import period_check, period_partitions, sync_periods
from pipelines.resources import CareDataConfig


def _md(report: dict) -> dict:
    """Dagster metadata from a stage report: numbers stay numbers, lists become JSON."""
    out = {}
    for k, v in report.items():
        if k == "data_docs" and v:
            out[k] = dg.MetadataValue.url(v)
        elif isinstance(v, dict) and set(v) == {"markdown"}:
            out[k] = dg.MetadataValue.md(v["markdown"])
        elif isinstance(v, bool) or v is None:
            out[k] = dg.MetadataValue.text(str(v))
        elif isinstance(v, (int, float)):
            out[k] = v
        elif isinstance(v, (list, dict)):
            out[k] = dg.MetadataValue.json(v)
        else:
            out[k] = dg.MetadataValue.text(str(v))
    return out


def _follow_the_data(context: dg.AssetExecutionContext, settings) -> dict:
    """The period partitions (dynamic) made exactly the months with data in the landing zone,
    so that a backfill or the UI can run any of them after the scan."""
    added, removed = sync_periods(context.instance, stages.periods(settings))
    if removed:
        context.log.info(f"periods without a file in the landing zone any more: {', '.join(removed)}")
    return {"periods_added": added, "periods_removed": removed}


@dg.asset(group_name="ingest", description="Every file in the landing zone recorded in the ledger (name, size, SHA-256, outcome); the period partitions made the months with data.")
def landing_scan(context: dg.AssetExecutionContext, caredata: CareDataConfig) -> dg.MaterializeResult:
    settings = caredata.settings()
    report = stages.scan(settings)
    return dg.MaterializeResult(metadata=_md({**report, **_follow_the_data(context, settings)}))


@dg.asset(group_name="ingest", deps=[landing_scan], description="ODS reference data: GP practices (epraccur), providers, sites.")
def reference_data(context: dg.AssetExecutionContext, caredata: CareDataConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=_md(stages.load_reference(caredata.settings())))


def _drift_spec(name: str, what: str, partitioned: bool = False) -> dg.AssetCheckSpec:
    return (period_check if partitioned else dg.AssetCheckSpec)(
        "schema_drift", asset=name,
        description=f"Columns added, missing or renamed in {what}, per submitter, against the declared "
                    "columns and the submitter's previous submission (column names only; pipelines/drift.py).")


def _drift_result(settings, source: str, period: str | None) -> dg.AssetCheckResult:
    """The schema_drift check (severity warn), worked out by pipelines.drift."""
    check = drift.check_feed(stages.stores(settings)[1], source, period)
    metadata = {"period": period, **check["metadata"]} if period else check["metadata"]
    return dg.AssetCheckResult(check_name=check["name"], passed=check["passed"], severity=dg.AssetCheckSeverity.WARN,
                               description=check["description"], metadata=_md(metadata))


@dg.asset(group_name="ingest", deps=[landing_scan, reference_data], pool="caredata_heavy",
          check_specs=[_drift_spec("hes_apc_bronze", "the latest HES extract (HES has no submitter: against "
                                                     "the extract before it)")],
          description="HES APC extracts (many providers and periods), validated into the warehouse as net change.")
def hes_apc_bronze(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    settings = caredata.settings()
    report = stages.ingest_hes(settings)
    # A HES extract's rows bring their own months (any month): they become periods.
    yield dg.MaterializeResult(metadata=_md({**report, **_follow_the_data(context, settings)}))
    yield _drift_result(settings, "hes_apc", None)


def _bronze_asset(source: str, description: str) -> dg.AssetsDefinition:
    name = f"{source}_bronze"
    checks = [
        period_check("rows_accounted_for", asset=name, blocking=True,
                     description="Rows received = kept + quarantined for every submission of the period."),
        *[period_check(dim, asset=name, description=f"No {dim} rule failed ({dim} of the rows, by rule).")
          for dim in ("completeness", "validity", "uniqueness", "consistency")],
        period_check("no_held_submissions", asset=name,
                     description="No submission of the period is held (more than half its rows rejected; "
                                 "a GP extract with no data row or under half the rows of the "
                                 "practice's current extract)."),
        period_check("no_rejected_files", asset=name,
                     description="No file of the period was rejected whole (name, columns, parse)."),
        _drift_spec(name, "the period's submissions", partitioned=True),
    ]
    if source == "gp":
        checks.append(period_check(
            "no_unrecognised_objections", asset=name,
            description="Every OBJECTION value is empty, 9Nu0 or 9Nu4 (any other is read as type 1, counted, "
                        "and the extract named here)."))

    @dg.asset(name=name, group_name="ingest", partitions_def=period_partitions,
              deps=[landing_scan, reference_data], check_specs=checks, description=description)
    def _asset(context: dg.AssetExecutionContext, caredata: CareDataConfig):
        settings = caredata.settings()
        report = stages.ingest_feed(settings, source, context.partition_key)
        yield dg.MaterializeResult(metadata=_md(report["metadata"]))
        for check in stages.ingest_checks(report):
            yield dg.AssetCheckResult(
                check_name=check["name"], passed=check["passed"],
                severity=dg.AssetCheckSeverity.ERROR if check["severity"] == "error" else dg.AssetCheckSeverity.WARN,
                description=check["description"],
                metadata=_md({"period": context.partition_key, **check["metadata"]}),
            )
        yield _drift_result(settings, source, context.partition_key)

    return _asset


gp_bronze = _bronze_asset("gp", "GP extracts of the period: type 1 rows dropped on read, rows validated, kept or quarantined.")
sus_apc_bronze = _bronze_asset("sus_apc", "SUS APC submissions of the period (BULK and NET), validated, kept or quarantined.")
fft_bronze = _bronze_asset("fft", "FFT returns of the period, validated, kept or quarantined.")


@dg.asset(group_name="ingest", partitions_def=period_partitions, deps=[sus_apc_bronze, hes_apc_bronze],
          description="Current SUS episodes of the period: bulk replacement and net change applied in submission-time order.")
def sus_apc_current(context: dg.AssetExecutionContext, caredata: CareDataConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=_md(stages.current_sus(caredata.settings(), context.partition_key)))


@dg.asset(group_name="ingest", partitions_def=period_partitions, deps=[fft_bronze],
          description="Current FFT responses of the period: the newest file per provider.")
def fft_current(context: dg.AssetExecutionContext, caredata: CareDataConfig) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=_md(stages.current_fft(caredata.settings(), context.partition_key)))
