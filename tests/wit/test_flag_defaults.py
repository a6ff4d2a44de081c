"""The model-side commands' flags that set a config field default to None, and their help shows the dataclass's
default: each default has one home. Building the parser imports no torch, faiss or Pillow."""

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from clipmodel.embed.config import EncodeConfig, IndexConfig
from clipmodel.eval.config import EvalConfig
from clipmodel.templates import NAMED
from synthweb.spec import WebConfig
from wit import cli, encode_cmd, eval_cmd, search_cmd, web_cmd

ROOT = Path(__file__).resolve().parents[2]

# command -> (its config dataclass, {flag's dest: the field it sets})
COMMANDS = {
    "encode": (EncodeConfig, {f: f for f in ("batch_size", "workers", "precision", "limit_shards")}),
    "search": (IndexConfig, {"index": "kind", "ivf_threshold": "ivf_threshold", "nprobe": "nprobe"}),
    "eval": (EvalConfig, {f: f for f in ("templates", "batch_size", "workers")}),
    "web generate": (WebConfig, {f: f for f in ("seed", "pages", "hosts", "images_per_page", "eval_per_class")}),
}
# The fewest arguments each command parses with.
MINIMAL = {
    "encode": ["encode", "DS", "--model", "M", "--out", "E"],
    "search": ["search", "DS", "--embeddings", "E", "--key", "K"],
    "eval": ["eval"],
    "web generate": ["web", "generate", "--out", "W"],
}
CONFIG_OF = {
    "encode": encode_cmd.encode_config,
    "search": search_cmd.index_config,
    "eval": eval_cmd.eval_config,
    "web generate": web_cmd.web_config,
}


def _command_parser(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    for name in command.split():
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = subparsers.choices[name]
    return parser


def _options(command: str) -> dict[str, argparse.Action]:
    """{dest: action} of every option of `command`, --help aside."""
    return {a.dest: a for a in _command_parser(command)._actions if a.option_strings and a.dest != "help"}


def _parse(argv: list[str]) -> argparse.Namespace:
    args, _ = cli.build_parser().parse_known_args(argv)
    return args


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_a_config_field_defaults_to_none(command: str) -> None:
    config, fields = COMMANDS[command]
    options = _options(command)
    assert set(fields) <= set(options)
    assert {dest: options[dest].default for dest in fields} == dict.fromkeys(fields)
    # A flag named after a field of the dataclass is one of them: none slips in with a default of its own.
    named_after_a_field = set(options) & {f.name for f in dataclasses.fields(config)}
    assert named_after_a_field <= set(fields)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_the_dataclass_default(command: str) -> None:
    config, fields = COMMANDS[command]
    options, defaults = _options(command), config()
    for dest, field in fields.items():
        value = getattr(defaults, field)
        if value is None or field == "templates":  # None: nothing to show; templates: below, by name
            continue
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        assert f"default {shown}" in options[dest].help, (command, dest)


def test_eval_help_names_the_default_template_set() -> None:
    name = next(n for n, t in NAMED.items() if t == EvalConfig().templates)
    assert f"(default: the set {name!r})" in _options("eval")["templates"].help


def test_the_help_reads_200000_rows_with_a_separator() -> None:
    assert "(default 200,000)" in _options("search")["ivf_threshold"].help


@pytest.mark.parametrize("command", COMMANDS)
def test_nothing_given_is_the_dataclass_defaults(command: str) -> None:
    config, _ = COMMANDS[command]
    assert CONFIG_OF[command](_parse(MINIMAL[command])) == config()


def test_a_flag_given_wins() -> None:
    assert encode_cmd.encode_config(_parse([*MINIMAL["encode"], "--workers", "0"])) == EncodeConfig(workers=0)
    got = search_cmd.index_config(_parse([*MINIMAL["search"], "--index", "flat", "--nprobe", "4"]))
    assert got == IndexConfig(kind="flat", nprobe=4)
    got = eval_cmd.eval_config(_parse(["eval", "--templates", "imagenet80", "--batch-size", "8"]))
    assert got == EvalConfig(templates=NAMED["imagenet80"], batch_size=8)
    assert web_cmd.web_config(_parse([*MINIMAL["web generate"], "--seed", "3"])) == WebConfig(seed=3)


def test_eval_keeps_the_batch_and_workers_it_always_ran_with() -> None:
    # EvalConfig's workers were 0 while `wit eval` ran with 2; the dataclass now says 2, as EncodeConfig does.
    cfg = eval_cmd.eval_config(_parse(["eval"]))
    assert (cfg.batch_size, cfg.workers) == (256, 2) == (EncodeConfig().batch_size, EncodeConfig().workers)


def test_building_the_parser_imports_no_torch_faiss_or_pillow() -> None:
    # In a fresh interpreter: this process has imported them for other tests.
    code = "import sys, wit.cli; wit.cli.build_parser(); print([m in sys.modules for m in ('torch', 'faiss', 'PIL')])"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[False, False, False]"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*MINIMAL["encode"], "--batch-size", "0"], "batch_size must be >= 1"),
        ([*MINIMAL["search"], "--nprobe", "0"], "--nprobe and --ivf-threshold must be >= 1"),
        (["eval", "--zeroshot", "D", "--workers", "-1"], "--workers >= 0"),
        ([*MINIMAL["web generate"], "--pages", "0"], "pages must be at least 3"),
    ],
)
def test_a_bad_value_given_is_refused_in_one_line(argv: list[str], message: str, capsys) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"wit {argv[0]}: error: ") and "\n" not in err and message in err
