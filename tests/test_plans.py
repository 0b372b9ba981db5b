"""The relational plans of the current view, the spells and linkage (issue #23): hand-made
adversarial inputs with the answers worked out by hand, the working tables' declared
constraints checked, and the SQL carried to Spark by SQLGlot."""

from __future__ import annotations

import datetime as dt
import re

import pyarrow as pa
import pytest

from pipelines import current, linkage, schemas, spells
from pipelines.nhs_number import with_check_digit

N1, N2 = with_check_digit("999000001"), with_check_digit("999000002")
D = dt.date


# --------------------------------------------------------------------------- spells
_EP_TYPES = dict(provider_code=pa.string(), spell_id=pa.string(), susrecid=pa.string(), admidate=pa.date32(),
                 nhs_number=pa.string(), nhs_number_valid=pa.bool_(), pseudo_hesid=pa.string(),
                 epiorder=pa.string(), epistart=pa.date32(), epiend=pa.date32(), epistat=pa.string(),
                 disdate=pa.date32(), dismeth=pa.string())


JAN1, JAN2 = D(2014, 1, 1), D(2014, 1, 2)


def _ep(susrecid, provider="RAA", spell_id=None, admidate=JAN1, nhs=None, valid=False, hesid=None,
        epiorder="01", epistart=JAN1, epiend=JAN2, epistat="3", disdate=None, dismeth=None):
    return {"provider_code": provider, "spell_id": spell_id, "susrecid": susrecid, "admidate": admidate,
            "nhs_number": nhs, "nhs_number_valid": valid, "pseudo_hesid": hesid, "epiorder": epiorder,
            "epistart": epistart, "epiend": epiend, "epistat": epistat, "disdate": disdate, "dismeth": dismeth}


def _episodes(*rows) -> pa.Table:
    return pa.table({c: pa.array([r[c] for r in rows], t) for c, t in _EP_TYPES.items()})


def test_spells_from_adversarial_episodes():
    jan1, jan5 = D(2014, 1, 1), D(2014, 1, 5)
    rows = [
        # Person N1 (valid number) at RAA admitted 1 Jan, no spell id: one derived group.
        # Episode order: e2 (01), e3 (02), then e1 (EPIORDER 99 sorts after every real
        # order, though it started first). e2 has a discharge (DISDATE + DISMETH 1), so the
        # group is cut after it: spell DER:e2 = [e2]; spell DER:e3 = [e3, e1]. e1's DISMETH
        # 8 (still in hospital) is no discharge despite its DISDATE.
        _ep("e1", nhs=N1, valid=True, epiorder="99", epistart=jan1, disdate=D(2014, 1, 9), dismeth="8"),
        _ep("e2", nhs=N1, valid=True, epiorder="01", epistart=D(2014, 1, 2), disdate=D(2014, 1, 3), dismeth="1"),
        _ep("e3", nhs=N1, valid=True, epiorder="02", epistart=D(2014, 1, 4)),
        # No valid NHS number (the number is there but invalid): the person is the
        # PSEUDO_HESID (" H1" stripped). Same order, same start and end: the tie goes to
        # susrecid, so A4 before B5: spell DER:A4 = [A4, B5], B5 last.
        _ep("B5", nhs=N2, valid=False, hesid=" H1", admidate=jan5, epistart=jan5, epiend=jan5),
        _ep("A4", nhs=None, valid=None, hesid="H1", admidate=jan5, epistart=jan5, epiend=jan5),
        # Neither a number nor a HESID (a blank placeholder): a spell of its own, EPI:e6.
        _ep("e6", hesid="   "),
        # A given spell id (with spaces): ID group. EPIORDER "" is no order (after 03); e7
        # is last, and unfinished (EPISTAT 1), so its discharge does not end the spell.
        _ep("e7", spell_id=" S1 ", epiorder="", epistat="1", disdate=D(2014, 1, 3), dismeth="1"),
        _ep("e8", spell_id="S1", epiorder="03"),
        # No provider: in no spell.
        _ep("e9", provider="  "),
        # Same person and admission date at another provider: another group.
        _ep("e10", provider="RBB", nhs=N1, valid=True),
    ]
    got = spells.assign_spells(_episodes(*rows))
    # Sorted by provider, then group text: DER:<number>... < DER:HESID:... < EPI: < ID:
    assert got["susrecid"].tolist() == ["e2", "e3", "e1", "A4", "B5", "e6", "e8", "e7", "e10"]
    assert got["spell_id"].tolist() == ["DER:e2", "DER:e3", "DER:e3", "DER:A4", "DER:A4", "EPI:e6", "S1", "S1",
                                        "DER:e10"]
    assert got["spell"].tolist() == [0, 1, 1, 2, 2, 3, 4, 4, 5]
    assert got["is_last"].tolist() == [True, False, True, False, True, True, False, True, True]
    assert got["order_rank"].tolist() == [1.0, 2.0, 98.0, 1.0, 1.0, 1.0, 3.0, 98.0, 1.0]
    assert got["row"].tolist() == [1, 2, 0, 4, 3, 5, 7, 6, 9]
    assert got["provider_code"].tolist() == ["RAA"] * 8 + ["RBB"]
    last = spells.last_episodes(got)
    # the spells' discharges: e2 yes; e1 (DISMETH 8) no; e7 unfinished: no
    assert dict(zip(last["spell_id"], last["discharged"])) == {
        "DER:e2": True, "DER:e3": False, "DER:A4": False, "EPI:e6": False, "S1": False, "DER:e10": False}
    assert dict(zip(last["spell_id"], last["unfinished"]))["S1"]
    # group_keys is the same SQL: the person's number and admission date, never for e9's spell
    keys = spells.group_keys(_episodes(*rows)).to_pylist()
    assert keys[0] == keys[1] == keys[2] == f"DER:{N1}2014-01-01"
    assert keys[3] == keys[4] == "DER:HESID:H12014-01-05"
    assert keys[5] == "EPI:e6" and keys[6] == keys[7] == "ID:S1"


def test_spells_of_no_episodes_and_absent_columns():
    assert spells.assign_spells(_episodes()).empty
    # only provider and susrecid: every episode its own spell, order unknown (98)
    got = spells.assign_spells(pa.table({"provider_code": ["R1", "R1"], "susrecid": ["b", "a"]}))
    assert got["spell_id"].tolist() == ["EPI:a", "EPI:b"] and got["order_rank"].tolist() == [98.0, 98.0]


# --------------------------------------------------------------------------- current view
def test_protocols_bulk_net_deletes_and_replacements():
    # (submission, provider, susrecid, cds_update_type, line)
    rows = [
        ("p1-bulk", "P1", "A", "9", 2), ("p1-bulk", "P1", "B", "9", 3), ("p1-bulk", "P1", "C", "9", 4),
        ("p1-net1", "P1", "B", "1", 2),      # B deleted
        ("p1-net1", "P1", "D", "9", 3),      # D inserted ...
        ("p1-net1", "P1", "A", "9", 4),      # A replaced: this row is A now
        ("p1-net2", "P1", "D", " 1 ", 2),    # ... and deleted (spaces around the code)
        ("p1-net2", "P1", "E", "9", 3),      # E inserted
        ("p1-net3", "P1", "C", "9", 3),      # C replaced twice in one file: line 3 ...
        ("p1-net3", "P1", "C", "9", 2),      # ... wins over line 2, whatever the row order
        ("p2-bulk", "P2", "X", "9", 2), ("p2-bulk", "P2", "Y", "9", 3),
        ("p2-net", "P2", "Z", "9", 2),       # inserted, then gone with the later BULK
        ("p2-bulk2", "P2", "Y", "9", 2),     # BULK: only Y now (X, Z gone)
        ("p2-net2", "P2", "Y", "1", 2),      # Y deleted ...
        ("p2-net2", "P2", "Y", "9", 3),      # ... and inserted again (the later line wins)
    ]
    table = pa.table({
        "submission_id": [r[0] for r in rows], "provider_code": [r[1] for r in rows],
        "susrecid": [r[2] for r in rows], "cds_update_type": [r[3] for r in rows],
        "line": pa.array([r[4] for r in rows], pa.int64()),
    })
    # the order the submissions apply in (submission time); the BULK floor is per provider
    order = pa.table({"submission_id": ["p1-bulk", "p2-bulk", "p1-net1", "p2-net", "p1-net2", "p2-bulk2",
                                        "p1-net3", "p2-net2"],
                      "seq": pa.array(range(8), pa.int64()),
                      "bulk": [True, True, False, False, False, True, False, False]})
    kept = current.apply_protocols(table, order).to_pylist()
    # by provider then susrecid: A (net1 line 4), C (net3 line 3), E (net2), Y (net2 line 3)
    assert kept == [5, 8, 7, 15]
    # a NET before any BULK of its provider stands; a deletion of an unknown episode is nothing
    t2 = pa.table({"submission_id": ["n1", "n1"], "provider_code": ["P3", "P3"], "susrecid": ["Q", "R"],
                   "cds_update_type": ["9", "1"], "line": pa.array([2, 3], pa.int64())})
    o2 = pa.table({"submission_id": ["n1"], "seq": pa.array([0], pa.int64()), "bulk": [False]})
    assert current.apply_protocols(t2, o2).to_pylist() == [0]


# --------------------------------------------------------------------------- declarations checked
def _conforming(name: str, n: int = 2) -> dict[str, list]:
    """Columns of a declared working table filled with values that satisfy it."""
    ds = schemas.get(name)
    fill = {"source": "sus_apc", "cds_update_type": "9", "match_rank": 1, "spell_period": "2014-01",
            "period": "2014-01"}
    out = {}
    for c in ds.columns:
        if c.name in fill:
            out[c.name] = [fill[c.name]] * n
        elif pa.types.is_boolean(c.type):
            out[c.name] = [False] * n
        elif pa.types.is_string(c.type):
            out[c.name] = ["x"] * n
        elif pa.types.is_list(c.type):
            out[c.name] = [[]] * n
        elif pa.types.is_integer(c.type):
            out[c.name] = [2] * n
        elif pa.types.is_date(c.type):
            out[c.name] = [D(2014, 1, 1)] * n
        else:
            out[c.name] = [None] * n
    return out


def _table(name: str, cols: dict[str, list]) -> pa.Table:
    schema = schemas.get(name).arrow_schema(include_partition=True)
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema})


@pytest.mark.parametrize("name, column, bad, rule", [
    ("current_sus_episodes", "provider_code", None, "not nullable"),
    ("current_sus_episodes", "source", "SECRET-9990000018", "codes"),
    ("current_sus_episodes", "cds_update_type", "1", "codes"),       # a deletion left in the current view
    ("linked_episodes_working", "match_rank", 7, "codes"),
    ("linked_episodes_working", "type2_objection", None, "not nullable"),
    ("linked_episodes_working", "nhs_number_valid", None, "not nullable"),
    ("spells", "spell_period", "2014-13", "codes"),                   # format F_PERIOD
    ("spells", "spell_id", None, "not nullable"),
    ("spells", "discharged_alive", None, "not nullable"),
])
def test_working_tables_break_their_declarations(name, column, bad, rule):
    cols = _conforming(name)
    assert schemas.get(name).check(_table(name, cols)).num_rows == 2  # conforming: passes
    cols[column] = [cols[column][0], bad]
    with pytest.raises(schemas.ConstraintError) as err:
        schemas.get(name).check(_table(name, cols))
    msg = str(err.value)
    assert f"dataset {name}" in msg and f"column {column}" in msg and f"'{rule}'" in msg and "1 " in msg
    if isinstance(bad, str) and len(bad) > 2:
        assert bad not in msg and "9990000018" not in msg  # never the value


def test_current_sus_output_is_checked_against_its_declaration():
    # what current_sus returns for no data is the declared empty table
    assert schemas.get("current_sus_episodes").check(
        schemas.get("current_sus_episodes").arrow_schema(include_partition=True).empty_table()).num_rows == 0


# --------------------------------------------------------------------------- SQL carried to Spark
def _plans() -> dict[str, str]:
    return {
        "assign_spells": spells.assign_sql("CAST(CAST(admidate AS DATE) AS VARCHAR)"),
        "group_keys": spells._GROUP_KEYS_SQL.format(group=spells._group_sql("admidate")),
        "protocols": current.protocols_sql(),
        "link": linkage._LINK_SQL,
        "deaths": linkage._DEATHS_SQL,
        "coverage_episodes": linkage._COVERAGE_EPISODES_SQL.format(p_start="DATE '2014-01-01'",
                                                                   p_end="DATE '2014-01-31'"),
        "coverage_practice": linkage._COVERAGE_PRACTICE_SQL.format(period="2014-01", p_start="DATE '2014-01-01'",
                                                                   p_end="DATE '2014-01-31'", practice_pct="90.0"),
        "coverage_provider": linkage._COVERAGE_PROVIDER_SQL.format(period="2014-01", standard_pct="99.0"),
        "coverage_summary": linkage._COVERAGE_SUMMARY_SQL.format(period="2014-01"),
        "restricted": linkage._RESTRICTED_SQL.format(period="period"),
        "linkage_quality": linkage.linkage_quality_sql("2014-01"),
    }


@pytest.mark.parametrize("name", list(_plans()))
def test_plans_carry_to_spark(name):
    sqlglot = pytest.importorskip("sqlglot")
    sql = _plans()[name]
    # the plan only names its inputs: no DuckDB table function reads anything itself
    assert not re.search(r"\b(read_parquet|read_csv\w*|parquet_scan|read_json\w*|glob)\s*\(", sql, re.IGNORECASE)
    assert not re.search(r"\b(LATERAL|EXCLUDE|GROUP BY ALL)\b", sql, re.IGNORECASE)
    out = sqlglot.transpile(sql, read="duckdb", write="spark")
    assert len(out) == 1 and out[0].upper().startswith(("SELECT", "WITH"))


@pytest.fixture(scope="module")
def spark():
    pyspark = pytest.importorskip("pyspark.sql")
    session = (pyspark.SparkSession.builder.master("local[2]").appName("caredata-plans-test")
               .config("spark.sql.shuffle.partitions", "2").config("spark.ui.enabled", "false")
               .config("spark.sql.session.timeZone", "UTC").getOrCreate())
    yield session


def _on_spark(session, sql: str, inputs: dict[str, pa.Table]) -> list[dict]:
    import sqlglot

    for name, table in inputs.items():
        session.createDataFrame(table.to_pandas()).createOrReplaceTempView(name) if table.num_rows else \
            session.createDataFrame([], _spark_schema(table.schema)).createOrReplaceTempView(name)
    rows = session.sql(sqlglot.transpile(sql, read="duckdb", write="spark")[0]).collect()
    return [r.asDict() for r in rows]


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


@pytest.mark.spark
def test_spells_and_protocols_same_on_spark(spark):
    rows = [
        _ep("e1", nhs=N1, valid=True, epiorder="99", disdate=D(2014, 1, 9), dismeth="8"),
        _ep("e2", nhs=N1, valid=True, epiorder="01", epistart=D(2014, 1, 2), disdate=D(2014, 1, 3), dismeth="1"),
        _ep("e3", nhs=N1, valid=True, epiorder="02", epistart=D(2014, 1, 4)),
        _ep("B5", hesid=" H1"), _ep("A4", hesid="H1"), _ep("e6", hesid="   "),
        _ep("e7", spell_id=" S1 ", epiorder="", epistat="1"), _ep("e8", spell_id="S1", epiorder="03"),
    ]
    table, adm = spells._input(_episodes(*rows))
    want = spells.assign_spells(_episodes(*rows))
    got = _on_spark(spark, spells.assign_sql(adm), {"episodes": table})
    assert [r["spell_id"] for r in got] == want["spell_id"].tolist()
    assert [r["row"] for r in got] == want["row"].tolist()
    assert [r["is_last"] for r in got] == want["is_last"].tolist()
    assert [r["order_rank"] for r in got] == want["order_rank"].tolist()


@pytest.mark.spark
def test_protocols_and_linkage_same_on_spark(spark):
    rows = pa.table({"submission_id": ["b", "b", "n", "n", "n"], "provider_code": ["P1"] * 5,
                     "susrecid": ["A", "B", "B", "C", "A"], "cds_update_type": ["9", "9", " 1", "9", "9"],
                     "line": pa.array([2, 3, 2, 3, 4], pa.int64()),
                     "__i": pa.array(range(5), pa.int64())})
    subs = pa.table({"submission_id": ["b", "n"], "seq": pa.array([0, 1], pa.int64()), "bulk": [True, False]})
    got = _on_spark(spark, current.protocols_sql(), {"rows": rows, "subs": subs})
    assert [r["__i"] for r in got] == current.apply_protocols(rows.drop_columns(["__i"]), subs).to_pylist() == [4, 3]

    from test_linkage import _lazy_case, gp

    gp_rows, episodes = _lazy_case()
    want = linkage.link_episodes(episodes, gp(*gp_rows))
    ep_in = linkage._slim(episodes, linkage._EPISODE_IN).append_column(
        "__row", pa.array(range(episodes.num_rows), pa.int64()))
    gp_in = linkage._gp_input(gp(*gp_rows), linkage._GP_IN, linkage._GP_REQUIRED, "gp")
    got = _on_spark(spark, linkage._LINK_SQL, {"ep_in": ep_in, "gp_in": gp_in,
                                               "t2n_in": pa.table({"nhs": pa.array([], pa.string())})})
    for name in linkage.LINK_COLUMNS:
        assert [r[name] for r in got] == want.column(name).to_pylist(), name


def test_link_episodes_from_a_dataset_on_a_non_local_file_system():
    # a dataset on another file system (S3 in production; an in-memory one here) is read in
    # the process, only the plan's columns and rows with a valid NHS number: same links
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    from test_linkage import _lazy_case, gp

    gp_rows, episodes = _lazy_case()
    table = gp(*gp_rows)
    mock = pafs._MockFileSystem()
    mock.create_dir("gp")
    for i in range(0, table.num_rows, 4):
        with mock.open_output_stream(f"gp/part-{i:03d}.parquet") as out:
            pq.write_table(table.slice(i, 4), out)
    dataset = pads.dataset("gp", filesystem=mock, format="parquet")
    gp_in = linkage._gp_input(dataset, linkage._GP_IN, linkage._GP_REQUIRED, "gp", valid_only=True)
    assert isinstance(gp_in, pa.Table) and all(gp_in.column("nhs_number_valid").to_pylist())
    assert linkage.link_episodes(episodes, dataset).equals(linkage.link_episodes(episodes, table))
