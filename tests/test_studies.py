import json

import pytest

from deeplsp_helpers import studies


def test_a_study_is_recorded_beside_others_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "studies.json"
    path.write_text(json.dumps({"other": {"kept": True}}))
    calls = []

    def fake(seeds, log):
        calls.append(seeds)
        log("one line")
        return {"runs": {str(s): s for s in seeds}}

    monkeypatch.setattr(studies, "_ch06_structured", fake)
    lines = []
    result = studies.run_study("ch06_structured", (0, 2), path=path, log=lines.append)
    assert calls == [(0, 2)] and lines == ["one line"]
    assert result["runs"] == {"0": 0, "2": 2} and {"seconds", "recorded_on", "torch", "cpu"} <= set(result)
    assert studies.read_study("ch06_structured", path) == result
    assert json.loads(path.read_text())["other"] == {"kept": True}  # other records survive


@pytest.mark.parametrize("seeds, err", [((), ValueError), ((-1,), ValueError), ((1.5,), TypeError), ((True,), TypeError),
                                        (("0",), TypeError)])  # check_int's rule: a wrong type is a TypeError
def test_bad_seeds_are_refused(seeds, err, tmp_path):
    with pytest.raises(err, match="seeds"):
        studies.run_study("ch06_structured", seeds, path=tmp_path / "s.json")


def test_unknown_or_unrecorded_studies_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown study"):
        studies.read_study("nope")
    with pytest.raises(KeyError, match="python -m deeplsp_helpers.studies run ch06_structured"):
        studies.read_study("ch06_structured", tmp_path / "missing.json")


def test_the_chapter_request_rule():
    assert studies.ch06_request(3.30) == 2.75  # 90 % of 3.30 = 2.97, rounded down to a quarter
    assert studies.ch06_request(2.76) == 2.25
    assert studies.ch06_request(5.0) == 3.0


def test_the_recorded_request_accuracy_study_covers_three_nets():
    record = studies.read_study("request_accuracy")
    assert set(record["runs"]) == {"vgg", "resnet", "probe"}
    for runs in record["runs"].values():
        assert len(runs) >= 3
        for run in runs:
            median, low, high = run["measured_speedup"]
            assert low <= median <= high and run["predicted_speedup"] >= record["request"] * 0.99


def test_the_recorded_study_covers_every_arm_and_seed():
    record = studies.read_study("ch06_structured")
    assert len(record["seeds"]) >= 3 and set(record["runs"]) == {str(s) for s in record["seeds"]}
    for run in record["runs"].values():
        assert set(run["arms"]) == set(studies.ARMS)
        for arm in run["arms"].values():
            low, high = arm["measured_speedup"][1:]
            assert low <= arm["measured_speedup"][0] <= high and 0 < arm["val_acc"] <= 100
