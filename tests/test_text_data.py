"""The text corpus of chapter 09 (deeplsp_helpers.text_data): its splits, windows, encoding, and how it is found,
repaired or reported missing."""

import hashlib
import os
import shutil
import stat

import pytest
import torch

from deeplsp_helpers import text_data


@pytest.fixture(scope="module")
def kjv_path():
    return text_data.find_text()  # make setup puts it there (data/kjv/kjv.txt)


@pytest.fixture(scope="module")
def kjv(kjv_path):
    return text_data.load_text()


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """An empty data folder and no way to make the corpus: no bible program, no apt-get or dpkg, no subprocess."""
    monkeypatch.setenv("DEEPLSP_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(text_data, "DEBIAN_PROGRAM", tmp_path / "no" / "bible")
    monkeypatch.setattr(text_data, "DEBIAN_DATA", tmp_path / "no" / "bible.data")
    monkeypatch.setattr(text_data.shutil, "which", lambda *a, **k: None)
    runs = []

    def no_run(cmd, *a, **k):
        runs.append(cmd)
        raise OSError("no programs in this test")

    monkeypatch.setattr(text_data.subprocess, "run", no_run)
    return tmp_path / "data" / "kjv" / "kjv.txt", runs


# --- splits -------------------------------------------------------------------------------------------------------

def _split_of(block: int) -> str:
    return "val" if block % 20 == 18 else "test" if block % 20 == 19 else "train"


def test_the_splits_are_every_byte_of_the_file_in_blocks_of_90_5_5_percent(kjv, kjv_path):
    raw = kjv_path.read_bytes()
    assert len(raw) == text_data.TEXT_BYTES == sum(len(s) for s in kjv)
    assert all(s.dtype == torch.uint8 and s.ndim == 1 for s in kjv)
    B = text_data.BLOCK_BYTES
    blocks = [raw[i:i + B] for i in range(0, len(raw), B)]
    for name, split in zip(("train", "val", "test"), kjv):
        assert split.numpy().tobytes() == b"".join(b for i, b in enumerate(blocks) if _split_of(i) == name)
    assert len(kjv.val) / len(raw) == pytest.approx(0.05, abs=0.005)
    assert len(kjv.test) / len(raw) == pytest.approx(0.05, abs=0.005)
    assert kjv.train[:30].numpy().tobytes() == b"In the beginning God created t"  # the file starts as training text


def test_validation_and_test_text_are_byte_ranges_disjoint_from_training(kjv, kjv_path):
    """Each split is a union of whole blocks [i*B, (i+1)*B) of the file, and the blocks tile the file once."""
    raw, B = kjv_path.read_bytes(), text_data.BLOCK_BYTES
    ranges = [(i * B, min(len(raw), (i + 1) * B), _split_of(i)) for i in range((len(raw) + B - 1) // B)]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(raw)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # consecutive, never overlapping
    for name, split in zip(("train", "val", "test"), kjv):
        mine = [(lo, hi) for lo, hi, s in ranges if s == name]
        assert sum(hi - lo for lo, hi in mine) == len(split)
        assert split.numpy().tobytes() == b"".join(raw[lo:hi] for lo, hi in mine)
    held_out = [(lo, hi) for lo, hi, s in ranges if s != "train"]
    assert held_out[:2] == [(18 * B, 19 * B), (19 * B, 20 * B)]  # validation then test, in every 20 blocks
    assert {s for _, _, s in ranges[:18]} == {"train"}


def test_loading_twice_gives_the_same_splits(kjv):
    again = text_data.load_text()
    assert all(torch.equal(a, b) for a, b in zip(kjv, again))
    again.train[0] = 0  # the splits are copies: changing one changes neither another load nor the file
    assert kjv.train[0] == ord("I")


def test_the_block_pattern_on_a_small_file(tmp_path, monkeypatch):
    monkeypatch.setattr(text_data, "BLOCK_BYTES", 4)
    path = tmp_path / "small.txt"
    path.write_bytes(bytes(range(4 * 41 + 3)))  # 41 blocks of 4 and a last one of 3: blocks 0..41
    monkeypatch.setattr(text_data, "find_text", lambda **k: path)
    train, val, test = text_data.load_text()
    assert val.tolist() == [*range(18 * 4, 19 * 4), *range(38 * 4, 39 * 4)]
    assert test.tolist() == [*range(19 * 4, 20 * 4), *range(39 * 4, 40 * 4)]
    assert len(train) == 4 * 37 + 3 and train[-3:].tolist() == [164, 165, 166]


# --- windows, encoding -------------------------------------------------------------------------------------------

def test_eval_windows_are_consecutive_and_the_targets_are_the_next_bytes():
    tokens = torch.arange(101, dtype=torch.uint8)
    x, y = text_data.eval_windows(tokens, 10)
    assert x.shape == y.shape == (10, 10) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x.flatten(), torch.arange(100)) and torch.equal(y, x + 1)
    x, y = text_data.eval_windows(tokens, 10, max_windows=3)
    assert x.shape == (3, 10) and torch.equal(y, x + 1)
    assert text_data.eval_windows(torch.arange(100), 10)[0].shape == (9, 10)  # 100 bytes: 9 windows of 10 + 1


def test_random_windows_lie_inside_the_text_and_repeat_with_the_generator():
    tokens = torch.arange(50, dtype=torch.uint8)
    x, y = text_data.random_windows(tokens, 64, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 8) and x.dtype == torch.int64
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], y[:, :-1])  # consecutive bytes, targets one ahead
    assert int(y.max()) <= 49 and int(x.min()) >= 0
    x2, _ = text_data.random_windows(tokens, 64, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    x, y = text_data.random_windows(tokens[:9], 4, 8)  # exactly one window fits
    assert torch.equal(x[0], torch.arange(8)) and (x == x[0]).all()


def test_windows_refuse_bad_tokens_and_sizes():
    tokens = torch.arange(20, dtype=torch.uint8)
    with pytest.raises(ValueError, match="tokens holds 20 bytes: a window of context 20 needs 21"):
        text_data.eval_windows(tokens, 20)
    with pytest.raises(ValueError, match="needs 21"):
        text_data.random_windows(tokens, 2, 20)
    with pytest.raises(TypeError, match="1-D tensor"):
        text_data.eval_windows(tokens[None], 4)
    with pytest.raises(TypeError, match="1-D tensor"):
        text_data.random_windows(list(range(20)), 2, 4)
    with pytest.raises(TypeError, match="integer tensor"):  # used to be truncated to bytes silently
        text_data.eval_windows(tokens.float() / 3, 4)
    with pytest.raises(ValueError, match="batch_size"):
        text_data.random_windows(tokens, 0, 4)
    with pytest.raises(ValueError, match="context"):
        text_data.eval_windows(tokens, 0)
    with pytest.raises(ValueError, match="max_windows"):
        text_data.eval_windows(tokens, 4, max_windows=0)


@pytest.mark.parametrize("s", ["In the beginning", "a", "Grüße, naïve café — ½ 😀\n\ttab", "\x00\x7f"])
def test_decode_undoes_encode(s):
    tokens = text_data.encode(s)
    assert tokens.dtype == torch.uint8 and tokens.tolist() == list(s.encode("utf-8"))
    assert text_data.decode(tokens) == s == text_data.decode(tokens.long()) == text_data.decode(tokens.tolist())


def test_encode_and_decode_refuse_what_is_not_text_or_bytes():
    with pytest.raises(ValueError, match="text is empty"):
        text_data.encode("")
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        text_data.encode(b"abc")
    assert text_data.decode([0xFF, 65]) == "\ufffdA"  # not UTF-8: a replacement character, not an error
    assert text_data.decode(torch.zeros(0, dtype=torch.uint8)) == ""
    with pytest.raises(ValueError, match="0..255"):
        text_data.decode(torch.tensor([65, 256]))
    with pytest.raises(ValueError, match="0..255"):
        text_data.decode([65, -1])
    with pytest.raises(TypeError, match="integer tensor"):
        text_data.decode(torch.tensor([65.0, 66.0]))
    with pytest.raises(TypeError, match="1-D"):
        text_data.decode(torch.tensor([[65, 66]]))
    with pytest.raises(TypeError, match="byte values"):
        text_data.decode("AB")
    with pytest.raises(TypeError, match="byte values"):
        text_data.decode([65.0])


# --- finding, repairing, reporting -------------------------------------------------------------------------------

def test_without_the_file_or_any_way_to_make_it_every_way_is_listed(nowhere, capsys):
    path, runs = nowhere
    for call in (text_data.find_text, lambda: text_data.find_text(install=True), text_data.setup,
                 text_data.load_text):
        with pytest.raises(text_data.TextNotFoundError) as info:
            call()
        message = str(info.value)
        assert f"is not at {path}" in message
        assert "apt-get install bible-kjv" in message and "python -m deeplsp_helpers.text_data setup" in message
        assert text_data.TEXT_SHA256[:12] in message
    assert isinstance(info.value, FileNotFoundError) and runs == [] and not path.exists()
    assert text_data.main(["setup"]) == 1 and text_data.main(["where"]) == 1
    assert "apt-get install bible-kjv" in capsys.readouterr().err


def test_without_root_the_packages_are_downloaded_and_a_failed_download_is_reported(nowhere, monkeypatch):
    path, runs = nowhere
    monkeypatch.setattr(text_data.shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}")
    monkeypatch.setattr(text_data.os, "geteuid", lambda: 1000)  # not root: no apt-get install
    with pytest.raises(text_data.TextNotFoundError, match="apt-get install bible-kjv"):
        text_data.find_text(install=True)
    assert runs == [["apt-get", "download", *text_data.PACKAGES]]
    runs.clear()
    with pytest.raises(text_data.TextNotFoundError):
        text_data.find_text()  # without install: nothing is downloaded
    assert runs == []


def test_an_intact_file_is_used_as_it_is(kjv_path, nowhere):
    path, runs = nowhere
    path.parent.mkdir(parents=True)
    shutil.copy(kjv_path, path)
    os.utime(path, (1_000_000, 1_000_000))
    assert text_data.find_text() == path and text_data.find_text(install=True) == path
    assert path.stat().st_mtime == 1_000_000 and runs == []  # not rewritten, no program run
    assert len(text_data.load_text().val) > 0


def _fake_bible(folder, lines_from):
    """A ``bible`` program printing ``lines_from`` as the real one prints verses (``  N text``), and its data file."""
    folder.mkdir(parents=True, exist_ok=True)
    program, data = folder / "bible", folder / "bible.data"
    program.write_text(f"#!/bin/sh\nsed 's/^/  1 /' '{lines_from}'\n")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    data.write_bytes(b"")
    return program, data


def test_a_truncated_file_is_not_trusted_but_made_again(kjv_path, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLSP_DATA", str(tmp_path / "data"))
    path = tmp_path / "data" / "kjv" / "kjv.txt"
    path.parent.mkdir(parents=True)
    path.write_bytes(kjv_path.read_bytes()[:-1000])
    program, data = _fake_bible(tmp_path / "bin", kjv_path)
    monkeypatch.setattr(text_data, "DEBIAN_PROGRAM", program)
    monkeypatch.setattr(text_data, "DEBIAN_DATA", data)
    assert text_data.find_text() == path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == text_data.TEXT_SHA256  # rewritten from the program
    assert sorted(p.name for p in path.parent.iterdir()) == ["kjv.txt"]  # no temporary file left


def test_a_damaged_file_without_a_way_to_repair_it_is_reported_as_damaged(kjv_path, nowhere):
    path, _ = nowhere
    path.parent.mkdir(parents=True)
    raw = bytearray(kjv_path.read_bytes())
    raw[100] ^= 0x20  # same size, one changed letter
    path.write_bytes(bytes(raw))
    with pytest.raises(text_data.TextNotFoundError, match="is damaged") as info:
        text_data.load_text()
    assert "apt-get install bible-kjv" in str(info.value)
    assert path.read_bytes() == bytes(raw)  # left for inspection, not deleted


def test_a_program_that_prints_another_text_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLSP_DATA", str(tmp_path / "data"))
    other = tmp_path / "other.txt"
    other.write_text("And it came to pass.\n" * 31_102)
    program, data = _fake_bible(tmp_path / "bin", other)
    monkeypatch.setattr(text_data, "DEBIAN_PROGRAM", program)
    monkeypatch.setattr(text_data, "DEBIAN_DATA", data)
    with pytest.raises(text_data.TextNotFoundError, match="different text"):
        text_data.find_text()
    assert not (tmp_path / "data" / "kjv" / "kjv.txt").exists()


def test_the_bible_program_output_is_cleaned_to_one_verse_per_line():
    raw = "\nGenesis 1\n\n  1 In the beginning.\n  2 And the earth.  \n" + "  3 x\n" * 30_000
    assert text_data.clean(raw).startswith("In the beginning.\nAnd the earth.\nx\n")
    with pytest.raises(ValueError, match="printed 2 verses"):
        text_data.clean("  1 a\n  2 b\n")
