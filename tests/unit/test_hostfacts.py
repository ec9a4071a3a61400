from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import PlanError
from harness.hostfacts import classify_model, detect


def test_local_model_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert classify_model("m") == (str(tmp_path / "m"), True)
    assert classify_model("./m/") == (str(tmp_path / "m"), True)


@pytest.mark.parametrize("hub_id", ["gpt2", "Qwen/Qwen2.5-0.5B-Instruct"])
def test_hub_ids(hub_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert classify_model(hub_id) == (hub_id, False)


def test_missing_paths_and_bad_dirs(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        classify_model(str(tmp_path / "nope"))
    with pytest.raises(PlanError, match="does not exist"):
        classify_model("./nope")
    with pytest.raises(PlanError, match=r"no config\.json"):
        classify_model(str(tmp_path))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PlanError, match="is a file"):
        classify_model(str(f))


def test_detect_overrides_and_bad_iface() -> None:
    facts = detect(device="cpu", iface="lo")
    assert facts.device == "cpu" and facts.iface == "lo" and facts.host_ip == "127.0.0.1"
    assert facts.cpu_count >= 1
    with pytest.raises(PlanError, match="not an interface here"):
        detect(iface="nope0")
