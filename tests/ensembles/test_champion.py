"""One champion, consistent everywhere: champion.keras, ensemble.json (with the file's sha256)
and the registry's `champion` alias move together, and only to a model scoring better by
the search's objective, unless --force (which says what it replaces)."""

from __future__ import annotations

import json

import numpy as np
from mlflow import MlflowClient
from ensembles.test_promote import fake_search, one_hot_ish

from search.ensembles import champion as champions
from search.ensembles import promote as promotion

MODEL = "fake-classifier"


def consistent(saved, client: MlflowClient) -> dict:
    """ensemble.json, the file and the alias all name one model; returns ensemble.json."""
    summary = json.loads(saved.folder.ensemble_record.read_text())
    promoted = summary["promoted"]
    assert champions.digest(saved.folder.champion) == promoted["sha256"]
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["members"] == ",".join(promoted["members"])
    assert version.tags["weights"] == ",".join(str(w) for w in promoted["weights"])
    assert version.tags["sha256"] == promoted["sha256"]
    return summary


def test_a_worse_method_never_replaces_the_champion_unless_forced(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    labels = np.arange(30) % 3
    # s is right everywhere and sure of it; averaging it with w keeps every answer but loses log-loss.
    saved = fake_search(tmp_path, {"s": one_hot_ish(labels, labels, 0.99),
                                   "w": one_hot_ish(labels, (labels + 1) % 3, 0.6)}, labels)
    first = promotion.promote(saved)
    assert first["promoted"]["members"] == ["s"]
    before = saved.folder.champion.read_bytes()
    assert consistent(saved, client)["promoted"]["method"] == "best_single"
    capsys.readouterr()

    kept = promotion.promote(saved, method="top_k")
    out = capsys.readouterr().out
    assert "Kept the champion" in out and "does not score better by val_accuracy" in out and "--force" in out
    assert kept == first and saved.folder.champion.read_bytes() == before
    assert consistent(saved, client)["created"] == first["created"]
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1  # nothing registered for a model not served

    forced = promotion.promote(saved, method="top_k", force=True)
    out = capsys.readouterr().out
    assert "Replacing the champion (best single (s), val accuracy 1.0000" in out and "as --force asks" in out
    assert forced["promoted"]["method"] == "top_k" and "as --force asks" in forced["replaces"]
    assert consistent(saved, client)["promoted"]["members"] == ["s", "w"]

    # Back to the better model: the alias follows the file, not the old version the force superseded.
    again = promotion.promote(saved)
    assert again["promoted"]["members"] == ["s"] and "scores lower" in again["replaces"]
    assert consistent(saved, client)["promoted"]["method"] == "best_single"
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "3"

    champions_tagged = client.search_runs([client.get_experiment_by_name("transfer-search/fake").experiment_id],
                                          "tags.champion = 'true'")
    assert [r.info.run_name for r in champions_tagged] == ["champion: best single s"]  # the replaced ones untagged


def test_the_mlflow_runs_list_shows_the_champion_and_compares_searches(searched):
    client = MlflowClient(searched.tracking_uri)
    experiment = client.get_experiment_by_name("transfer-search/digits").experiment_id
    summary = json.loads((searched.space_dir / "ensemble.json").read_text())
    (champion,) = client.search_runs([experiment], "tags.champion = 'true'")
    members = " + ".join(summary["promoted"]["members"])
    assert champion.info.run_name.startswith(f"champion: {summary['promoted']['method'].replace('_', ' ')} {members}")
    search_run = client.get_run(json.loads((searched.space_dir / "mlflow.json").read_text())["run_id"])
    assert search_run.data.tags["champion_run_id"] == champion.info.run_id
    assert search_run.data.metrics["trials_finished"] == 3
    assert search_run.data.metrics["champion_val_accuracy"] == summary["promoted"]["val_accuracy"]
    assert search_run.data.metrics["champion_held_out_val_accuracy"] == summary["promoted"]["held_out_val_accuracy"]
    assert "best_val_accuracy" in search_run.data.metrics
    trials = client.search_runs([experiment], "tags.trial_id != ''", order_by=["tags.trial_number ASC"])
    names = sorted(r.info.run_name for r in trials)
    assert names[0].startswith("trial 001 ") and all("learning_rate=" in n for n in names), names
