import pyarrow as pa
import pytest

from pipelines import schemas


def test_every_column_has_a_description_and_every_dataset_a_grain():
    for ds in schemas.datasets():
        assert ds.grain and ds.description, ds.name
        for c in ds.columns:
            assert c.description.strip(), f"{ds.name}.{c.name}"


def test_public_output_columns_exactly_as_outputs_md():
    ds = schemas.get("linkage_coverage_provider")
    assert ds.column_names == [
        "period", "provider_code", "commissioner_code", "episodes", "episodes_valid_nhs_number",
        "pct_valid_nhs_number", "episodes_verified_nhs_number", "pct_verified_nhs_number",
        "episodes_linked", "pct_linked", "linked_rank_1", "linked_rank_2", "linked_rank_3",
        "linked_rank_4", "linked_rank_5", "meets_nhs_number_standard"]
    assert set(schemas.get("fft_scores").column_names) >= {
        "period", "setting", "level", "org_code", "parent_code", "responses", "extremely_likely", "likely",
        "neither", "unlikely", "extremely_unlikely", "dont_know", "pct_recommend", "pct_not_recommend",
        "net_score", "suppressed"}


def test_parquet_schema_derived_from_declaration():
    ds = schemas.get("linkage_coverage_practice")
    sch = ds.arrow_schema()
    assert "period" not in sch.names  # in the path, not in the files
    assert sch.field("extract_date").type == pa.date32()
    assert sch.field("registered_patients").type == pa.int64()
    assert sch.field("pct_linked").type == pa.float64()
    assert sch.field("registered_patients_suppressed").type == pa.bool_()
    assert sch.field("pct_linked").metadata[b"description"].startswith(b"100 x")
    # staged (not yet disclosure-controlled) tables have no flags
    assert "registered_patients_suppressed" not in ds.arrow_schema(staged=True).names


def test_conform_casts_and_refuses_missing_columns():
    ds = schemas.get("ref_providers")
    t = pa.table({"commissioner_code": ["00K"], "provider_code": ["RGT"], "name": ["A"], "extra": [1]})
    out = ds.conform(t)
    assert out.column_names == ["provider_code", "name", "commissioner_code"]
    with pytest.raises(ValueError, match="missing columns"):
        ds.conform(pa.table({"provider_code": ["RGT"]}))


def test_restricted_datasets_hold_no_direct_identifier():
    for ds in schemas.datasets("restricted"):
        assert not {"nhs_number", "postcode", "date_of_birth", "dob", "name"} & set(ds.column_names), ds.name
