"""tables.py on hand-written results.json files: one row per run, sorted, errors with two decimals, "-" for numbers
a run does not have yet, plain and Markdown layouts, and unreadable folders reported on stderr."""
import json

import pytest

import tables


def write_run(folder, **values):
    result = dict(dataset="mnist", method="binarynet", epochs=1000, epochs_done=1000, train_size=50000, best_epoch=812,
                  best_val_error=0.84, test_error=0.956, paper_test_error=0.96)
    result.update(values)
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(result))
    return str(folder)


def test_one_run_becomes_one_row(tmp_path):
    row = tables.read_run(write_run(tmp_path / "bnn"))
    assert row == ("mnist", "binarynet", "1000/1000", "50000", "812", "0.84", "0.96", "0.96")


def test_a_run_without_a_best_epoch_yet_shows_dashes(tmp_path):
    row = tables.read_run(write_run(tmp_path / "new", epochs_done=0, best_epoch=0, best_val_error=100.,
                                    test_error=None, paper_test_error=None))
    assert row[2:] == ("0/1000", "50000", "0", "100.00", "-", "-")


def test_plain_table_aligns_columns_under_the_header(capsys, tmp_path):
    folders = [write_run(tmp_path / "bc", dataset="cifar10", method="bc-det", epochs=5, epochs_done=3,
                         train_size=400, best_epoch=3, best_val_error=61.5, test_error=62.25, paper_test_error=9.9),
               write_run(tmp_path / "bnn")]
    assert tables.main(folders) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "dataset  method     epochs     train rows  best epoch  val error %  test error %  paper %",
        "cifar10  bc-det     3/5        400         3           61.50        62.25         9.90   ",
        "mnist    binarynet  1000/1000  50000       812         0.84         0.96          0.96   "]


def test_markdown_table(capsys, tmp_path):
    assert tables.main([write_run(tmp_path / "bnn"), "--markdown"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| dataset | method | epochs | train rows | best epoch | val error % | test error % | paper % |",
        "|---|---|---|---|---|---|---|---|",
        "| mnist | binarynet | 1000/1000 | 50000 | 812 | 0.84 | 0.96 | 0.96 |"]


def test_unreadable_folders_are_listed_and_the_rest_printed(capsys, tmp_path):
    good = write_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "results.json").write_text('{"dataset": "mni')
    assert tables.main([str(tmp_path / "empty"), good, str(torn)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert captured.err.splitlines() == [
        "skipped {}: no readable results.json (FileNotFoundError)".format(tmp_path / "empty"),
        "skipped {}: no readable results.json (JSONDecodeError)".format(torn)]
    assert tables.main([str(tmp_path / "empty")]) == 1       # nothing to print at all


def test_no_folder_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        tables.main([])
    assert info.value.code == 2 and "the following arguments are required: folders" in capsys.readouterr().err
