"""serve.model = registry:prod on a real git + DVC project: the service serves the version prod holds, fetched
through DVC, and a reload follows a promotion and a rollback."""

import asyncio
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tasks.registry import tags
from tasks.runtime.settings import API_KEYS_ENV, load_serve_settings
from tasks.serving.app import create_app
from tasks.runtime.prediction_log import read_prediction_log
from tasks.serving.reload import reload_if_changed
from tasks.serving.scoring import ModelHolder, load_served
from tasks.serving.source import RegistrySource, SourceError
from tests.conftest import REPO, build_released_project, keyword_reviews, tiny_params

pytestmark = pytest.mark.e2e


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def reload(source, holder):
    return asyncio.run(reload_if_changed(source, holder, name="tunegate", threads=1, drain_timeout_s=5))


def promote_new_release(root: Path, version: str) -> None:
    """A new registry version (another commit of the same model files) put in prod, as `tunegate promote` tags it."""
    git(root, "commit", "-q", "--allow-empty", "-m", f"release {version}")
    tags.register(root, git(root, "rev-parse", "HEAD"), version,
                  tags.tag_message(f"register {version}", {"gate": "PROMOTE", "reason": f"release {version}"}))
    tags.assign(root, version, tags.PROD, tags.tag_message(f"prod <- {version}", {"reason": f"release {version}"}))


@pytest.fixture
def released_project(tmp_path, served_folders, tiny_model_dir):
    """A git + DVC project with a committed (dvc add-ed) gate release: what `tunegate promote` publishes
    (tests/test_promote.py runs promote itself; this one needs only its tags and DVC's copy)."""
    train = tmp_path / "train.parquet"
    keyword_reviews(50).to_parquet(train)
    return build_released_project(tmp_path / "project", served_folders[0], train, tiny_params(tiny_model_dir))


def test_registry_source_follows_prod_through_a_promotion_and_a_rollback(released_project, tmp_path, monkeypatch):
    root = released_project
    source = RegistrySource(root, tags.PROD)
    with pytest.raises(SourceError, match="tunegate promote"):
        source.resolve()  # nothing promoted yet

    tags.register(root, git(root, "rev-parse", "HEAD"), "v0.1.0",
                  tags.tag_message("register v0.1.0", {"gate": "PROMOTE"}))
    tags.assign(root, "v0.1.0", tags.PROD, tags.tag_message("prod <- v0.1.0", {}))
    shutil.rmtree(root / "artifacts")  # what is served comes from DVC at the version's commit, not the workspace
    first = source.resolve()
    assert first.version == "v0.1.0" and first.folder == root / ".tunegate" / "registry" / "v0.1.0"
    holder = ModelHolder(load_served(first.folder, "tunegate", first.version, threads=1))
    assert reload(source, holder) is None

    # A second version put in prod.
    promote_new_release(root, "v0.2.0")
    assert reload(source, holder) == "v0.2.0"
    assert holder.current.info.version == "v0.2.0"
    assert holder.current.info.folder == str(root / ".tunegate" / "registry" / "v0.2.0")
    with holder.acquire() as model:
        assert len(model.score(["a gripping film"], max_batch_size=1)) == 1

    # A rollback moves prod back: the service follows it too.
    tags.assign(root, "v0.1.0", tags.PROD,
                tags.tag_message("rollback: prod <- v0.1.0 (from v0.2.0)", {"rolled back from": "v0.2.0"}))
    assert reload(source, holder) == "v0.1.0"
    assert holder.current.info.version == "v0.1.0" and reload(source, holder) is None
    holder.current.close()

    # The service (serve.model: registry:prod) follows prod when asked to load, and says which version scored.
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    settings = load_serve_settings(REPO / "params.yaml", {"model": "registry:prod", "reload_seconds": 0,
                                                          "log_dir": str(tmp_path / "predictions"), "threads": 1})
    app = create_app(settings, root)

    async def drive() -> list[tuple[int, str | None, dict]]:
        seen = []
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://serve.test") as client:
                async def predict():
                    got = await client.post("/v1/predict", json={"texts": ["a gripping film"]})
                    seen.append((got.status_code, got.headers.get("X-Model-Version"), got.json()))

                await predict()
                unchanged = await client.post("/v2/repository/models/tunegate/load")
                seen.append((unchanged.status_code, None, unchanged.json()))
                promote_new_release(root, "v0.3.0")
                loaded = await client.post("/v2/repository/models/tunegate/load")
                seen.append((loaded.status_code, None, loaded.json()))
                await predict()
        return seen

    before, unchanged, loaded, after = asyncio.run(drive())
    assert before[:2] == (200, "v0.1.0") and before[2]["model_version"] == "v0.1.0"
    assert unchanged[0] == 200 and unchanged[2]["changed"] is False
    assert loaded[0] == 200 and loaded[2] == {"model_name": "tunegate", "model_version": "v0.3.0", "changed": True}
    assert after[:2] == (200, "v0.3.0")
    # The prediction log records the version that scored each text.
    assert [r["model_version"] for r in read_prediction_log(tmp_path / "predictions")] == ["v0.1.0", "v0.3.0"]
