"""`vlmjobs parse`, `vlmjobs dev make-model`, `vlmjobs dev make-shapes`, run through click."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vlmjobs.cli.main import cli

TEXT = '```json\n[\n\t{"bbox_2d": [28, 56, 280, 560], "label": "a cat"}\n]\n```'


@pytest.mark.parametrize(
    "args,stdin,exit_code,want",
    [
        (["--input-size", "560x840", "--image-size", "1000x1500", "-"], TEXT, 0,
         {"regions": [{"bbox": [50.0, 100.0, 500.0, 1000.0], "phrase": "a cat"}], "status": "ok",
          "dropped": 0}),
        # case: input frame -> original pixels
        (["--input-size", "1000x1000", "--image-size", "100x100", "--no-clip"], TEXT, 0,
         {"regions": [{"bbox": [2.8, 5.6, 28.0, 56.0], "phrase": "a cat"}], "status": "ok",
          "dropped": 0}),
        # case: stdin by default, no clipping needed
        (["--input-size", "100x100", "--image-size", "100x100", "--convention", "1000"],
         "<|object_ref_start|>a<|object_ref_end|><|box_start|>(0,0),(500,1000)<|box_end|>", 0,
         {"regions": [{"bbox": [0.0, 0.0, 50.0, 100.0], "phrase": "a"}], "status": "ok",
          "dropped": 0}),
        # case: Qwen2-VL 0-1000 tokens
        (["--input-size", "100x100", "--image-size", "100x100"], "nothing here", 0,
         {"regions": [], "status": "unparseable", "dropped": 0}),
        # case: no regions is not an error
        (["--input-size", "0x840", "--image-size", "1000x1500"], TEXT, 2, "'0x840'"),
        # case: zero width: exit 2 naming the value
        (["--input-size", "560x840", "--image-size", "1000x-5"], TEXT, 2, "'1000x-5'"),
        # case: negative height
        (["--input-size", "560", "--image-size", "1000x1500"], TEXT, 2, "not WxH"),
        # case: malformed size
    ],
)  # fmt: skip
def test_parse_command(args, stdin, exit_code, want):
    result = CliRunner().invoke(cli, ["parse", *args], input=stdin)
    assert result.exit_code == exit_code, result.output
    if exit_code == 0:
        assert json.loads(result.output) == want
    else:
        assert want in result.output


def test_parse_reads_a_file(tmp_path):
    (tmp_path / "out.txt").write_text(TEXT)
    args = [
        "parse",
        "--input-size",
        "560x840",
        "--image-size",
        "560x840",
        str(tmp_path / "out.txt"),
    ]
    result = CliRunner().invoke(cli, args)
    assert json.loads(result.output)["regions"][0]["bbox"] == [28.0, 56.0, 280.0, 560.0]


def test_dev_make_model_and_make_shapes(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["dev", "make-model", str(tmp_path / "m"), "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "preprocessor_config.json").is_file()
    result = runner.invoke(cli, ["dev", "make-shapes", str(tmp_path / "s"), "--n", "3"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "s" / "regions.jsonl").read_text().splitlines()) == 3
    bad = runner.invoke(cli, ["dev", "make-model", str(tmp_path / "x"), "--arch", "13b"])
    assert bad.exit_code == 2 and "'13b'" in bad.output
