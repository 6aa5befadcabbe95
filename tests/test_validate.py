"""`ocrcat validate`: planted faults are reported with the right sample ids; a clean catalog passes."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

from ocrcat.catalog import Catalog, CatalogError, sample_id
from ocrcat.inspection.validate import image_problem, path_problem, validate
from ocrcat.cli import app
from ocrcat.ingest.runner import ingest

SOURCES = ("chartqa", "latex_formulas")


@pytest.fixture(scope="module")
def pristine(sample_mirror_factory, tmp_path_factory):
    """A real catalog ingested from sample mirrors; tests work on copies of it."""
    path = tmp_path_factory.mktemp("validate") / "catalog"
    with Catalog(path) as cat:
        for source in SOURCES:
            ingest(cat, source, mirror=sample_mirror_factory(source, rows=12))
    return path


@pytest.fixture
def catalog(pristine, tmp_path):
    path = tmp_path / "catalog"
    shutil.copytree(pristine, path)
    return path


def by_check(results):
    return {(r.source, r.check): r for r in results}


def test_clean_catalog_passes(catalog):
    with Catalog(catalog, read_only=True) as cat:
        results = validate(cat, deep=True)
    checks = {r.check for r in results}
    assert {"image_prefix", "image_path", "image_tokens", "image_decodes", "sample_id"} <= checks
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert {r.source for r in results} == set(SOURCES)
    assert all(r.checked > 0 for r in results)

    out = CliRunner().invoke(app, ["validate", "--deep", "--json", "--catalog", str(catalog)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["ok"] is True


def test_planted_faults_are_reported_with_their_sample_ids(catalog):
    with Catalog(catalog) as cat:
        # latex_formulas rows each have their own image, so a broken file breaks exactly one row.
        rows = cat.con.execute(
            "SELECT sample_id, image_path FROM samples WHERE source = 'latex_formulas' "
            "AND image_path IN (SELECT image_path FROM samples GROUP BY 1 HAVING count(*) = 1) "
            "ORDER BY sample_id LIMIT 4"
        ).fetchall()
        (deleted, deleted_path), (corrupt, corrupt_path), (tokens, _), (prefix, _) = rows
        (catalog / deleted_path).unlink()
        data = (catalog / corrupt_path).read_bytes()
        (catalog / corrupt_path).write_bytes(data[: len(data) // 2])  # a truncated file
        cat.con.execute("UPDATE samples SET image_tokens = image_tokens + 1 WHERE sample_id = ?", [tokens])
        cat.con.execute("UPDATE samples SET text = substr(text, 9) WHERE sample_id = ?", [prefix])

        found = by_check(validate(cat, deep=True))
        quick = by_check(validate(cat))

    src = "latex_formulas"
    assert found[(src, "image_path")].examples == [deleted]
    assert found[(src, "image_path")].failed == 1
    assert "file missing" in found[(src, "image_path")].note
    assert sorted(found[(src, "image_decodes")].examples) == sorted([deleted, corrupt])
    assert found[(src, "image_tokens")].examples == [tokens]
    assert found[(src, "image_prefix")].examples == [prefix]
    assert (src, "image_decodes") not in quick  # only --deep reads the files
    # Nothing leaks into the other source or the other checks.
    assert all(r.ok for (s, _), r in found.items() if s != src)
    assert found[(src, "sample_id")].ok and found[(src, "image_facts")].ok

    out = CliRunner().invoke(app, ["validate", "--deep", "--json", "--catalog", str(catalog)])
    assert out.exit_code == 1
    report = json.loads(out.output)
    assert report["ok"] is False
    failing = {(c["source"], c["check"]): c["examples"] for c in report["checks"] if not c["ok"]}
    assert failing[(src, "image_tokens")] == [tokens]
    assert failing[(src, "image_prefix")] == [prefix]


def test_sample_id_and_path_escape_are_caught(catalog):
    (catalog.parent / "outside.png").write_bytes(b"not inside the catalog")
    with Catalog(catalog) as cat:
        a, b, c = [r[0] for r in cat.con.execute(
            "SELECT sample_id FROM samples WHERE source = 'chartqa' ORDER BY sample_id LIMIT 3").fetchall()]
        cat.con.execute("UPDATE samples SET source_key = source_key || '-edited' WHERE sample_id = ?", [a])
        cat.con.execute("UPDATE samples SET image_path = '../outside.png' WHERE sample_id = ?", [b])
        cat.con.execute("UPDATE samples SET text = text || ' <image>' WHERE sample_id = ?", [c])
        found = by_check(validate(cat, sources=["chartqa"]))
    assert found[("chartqa", "image_prefix")].examples == [c]  # a second placeholder with no image
    assert found[("chartqa", "sample_id")].examples == [a]
    assert found[("chartqa", "image_path")].examples == [b]
    assert "not a relative path inside the catalog" in found[("chartqa", "image_path")].note
    assert {s for s, _ in found} == {"chartqa"}


def test_path_and_image_problems(tmp_path):
    with Catalog(tmp_path / "c") as cat:
        assert path_problem(cat, "/etc/passwd")
        assert path_problem(cat, "images/../../x.png")
        assert path_problem(cat, "images/a.png") == "images/a.png: file missing"
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), "red").save(buf, "PNG")
        (cat.dir / "ok.png").write_bytes(buf.getvalue())
        sha = hashlib.sha256(buf.getvalue()).hexdigest()
        assert image_problem(cat, "ok.png", sha, 40, 30) is None
        assert "decodes to 40x30" in image_problem(cat, "ok.png", sha, 41, 30)
        cut = buf.getvalue()[:60]  # a truncated file whose catalog hash matches: only decoding can tell
        (cat.dir / "cut.png").write_bytes(cut)
        assert "does not decode" in image_problem(cat, "cut.png", hashlib.sha256(cut).hexdigest(), 40, 30)


def test_conversations_of_text_rows(catalog):
    convs = {
        "good": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "system": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hello"}],
        "two_users": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}],
        "ends_with_user": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                           {"role": "user", "content": "b"}],
        "empty_content": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}],
        "not_a_list": {"role": "user", "content": "hi"},
        "missing": None,
    }
    ids = {key: sample_id("smoltalk", "train", key) for key in convs}
    with Catalog(catalog) as cat:
        cat.con.executemany(
            "INSERT INTO samples (sample_id, source, split, source_key, kind, text, messages, meta, ingest_run) "
            "VALUES (?, 'smoltalk', 'train', ?, 'text', 'a conversation', ?, '{}', 1)",
            [[ids[k], k, None if m is None else json.dumps(m)] for k, m in convs.items()],
        )
        found = by_check(validate(cat, sources=["smoltalk"]))
    bad = sorted(ids[k] for k in convs if k not in ("good", "system"))
    assert found[("smoltalk", "conversation")].checked == len(convs)
    assert sorted(found[("smoltalk", "conversation")].examples) == bad[:5]
    assert found[("smoltalk", "conversation")].failed == len(bad)
    assert ("smoltalk", "image_prefix") not in found  # no vision rows: nothing to check there


def test_mixture_checks(catalog):
    mixtures = pytest.importorskip("ocrcat.mix.mixtures")
    with Catalog(catalog) as cat:
        mixtures.create_mixture(cat, "charts", [("chartqa", "source = 'chartqa'", 1.5),
                                                ("formulas", "source = 'latex_formulas'", 2)], seed=3)
        clean = by_check(validate(cat))
        assert clean[("mixture:charts", "mixture_rows")].ok
        assert clean[("mixture:charts", "mixture_shares")].ok
        # A definition edited behind the view's back, and a component whose rows are gone.
        cat.con.execute("UPDATE mixture_components SET weight = 3 WHERE name = 'formulas'")
        cat.con.execute("DELETE FROM samples WHERE source = 'chartqa'")
        found = by_check(validate(cat))
    assert not found[("mixture:charts", "mixture_rows")].ok
    assert "chartqa" in found[("mixture:charts", "mixture_rows")].note
    assert not found[("mixture:charts", "mixture_shares")].ok
    assert "formulas" in found[("mixture:charts", "mixture_shares")].note


def test_unknown_source_is_a_user_error(catalog):
    with Catalog(catalog, read_only=True) as cat, pytest.raises(CatalogError, match="no rows of docbank"):
        validate(cat, sources=["docbank"])
    out = CliRunner().invoke(app, ["validate", "--source", "docbank", "--catalog", str(catalog)])
    assert out.exit_code == 2 and "no rows of docbank" in out.output


def exif_jpeg(orientation: int, size=(96, 48)) -> bytes:
    """A JPEG stored `size` wide and high whose EXIF orientation tag is `orientation`."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.new("RGB", size, (20 * orientation, 90, 160)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def test_deep_check_passes_exif_rotated_jpegs(tmp_path, sample_mirror_factory):
    # A ChartQA mirror whose train images are JPEGs with every EXIF orientation, ingested for real.
    import pyarrow.parquet as pq

    mirror = tmp_path / "mirror"
    shutil.copytree(sample_mirror_factory("chartqa", rows=12), mirror)
    train = next((mirror / "chartqa" / "data").glob("train-*.parquet"))
    table = pq.read_table(train)
    images = [{"bytes": exif_jpeg(1 + i % 8), "path": None} for i in range(table.num_rows)]
    assert table.num_rows >= 8
    table = table.set_column(table.schema.get_field_index("image"), "image",
                             pa.array(images, type=table.schema.field("image").type))
    pq.write_table(table, train)
    catalog = tmp_path / "catalog"
    with Catalog(catalog) as cat:
        ingest(cat, "chartqa", mirror=mirror, splits=["train"])
        sizes = cat.con.execute("SELECT DISTINCT image_width, image_height FROM samples").fetchall()
        results = by_check(validate(cat, deep=True))
    assert sorted(sizes) == [(48, 96), (96, 48)]  # ingest recorded orientations 5-8 turned by 90 degrees
    assert results[("chartqa", "image_decodes")].ok, results[("chartqa", "image_decodes")]
    assert results[("chartqa", "image_decodes")].checked == table.num_rows

    out = CliRunner().invoke(app, ["validate", "--deep", "--json", "--catalog", str(catalog)])
    assert out.exit_code == 0, out.output
    # The check still fails a size that is really wrong: the unturned size of a turned image.
    with Catalog(catalog) as cat:
        turned = cat.con.execute("SELECT min(sample_id) FROM samples WHERE image_width = 48").fetchone()[0]
        cat.con.execute("UPDATE samples SET image_width = 96, image_height = 48, image_tokens = ? WHERE sample_id = ?",
                        [cat.count_image_tokens(96, 48), turned])
        wrong = by_check(validate(cat, deep=True))[("chartqa", "image_decodes")]
    assert wrong.examples == [turned] and "decodes to 48x96, catalog says 96x48" in wrong.note


def test_symlink_to_a_file_outside_fails_and_names_the_sample(catalog, tmp_path):
    with Catalog(catalog, read_only=True) as cat:
        (victim, path), (other, other_path) = cat.con.execute(
            "SELECT sample_id, image_path FROM samples WHERE source = 'latex_formulas' "
            "AND image_path IN (SELECT image_path FROM samples GROUP BY 1 HAVING count(*) = 1) "
            "ORDER BY sample_id LIMIT 2").fetchall()
    # Same bytes, same hash, same size: only the real path tells that the file is not the catalog's.
    outside = tmp_path / "elsewhere" / "copy.png"
    outside.parent.mkdir()
    shutil.copyfile(catalog / path, outside)
    (catalog / path).unlink()
    (catalog / path).symlink_to(outside)
    # A link that stays inside the catalog is fine.
    inside = catalog / "images" / "kept.png"
    shutil.copyfile(catalog / other_path, inside)
    (catalog / other_path).unlink()
    (catalog / other_path).symlink_to(inside)

    with Catalog(catalog, read_only=True) as cat:
        found = by_check(validate(cat, deep=True))
    assert found[("latex_formulas", "image_path")].examples == [victim]
    assert found[("latex_formulas", "image_path")].note == f"{path}: resolves to {outside}, outside the catalog"
    assert found[("latex_formulas", "image_decodes")].examples == [victim]  # never read
    assert found[("chartqa", "image_path")].ok

    out = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["validate", "--catalog", str(catalog)])
    assert out.exit_code == 1
    line = next(l for l in out.stdout.splitlines() if "image_path" in l and "FAIL" in l)
    assert str(victim) in line and "outside the catalog" in line

    # The whole images folder on another disk (a link to it) is the catalog's own store.
    moved = tmp_path / "other-disk"
    (catalog / path).unlink()
    shutil.copyfile(outside, catalog / path)
    shutil.move(catalog / "images", moved)
    (catalog / "images").symlink_to(moved)
    with Catalog(catalog, read_only=True) as cat:
        assert all(r.ok for r in validate(cat, deep=True)), [r for r in validate(cat) if not r.ok]
