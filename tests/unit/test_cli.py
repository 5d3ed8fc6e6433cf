"""The vaeflow command line: config printing, clear errors, one name per option, layering."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from flows.cli import main
from flows.commands import job_config
from flows.parser import build_parser
from vae_core.config import ComputeConfig, EmbedConfig, GenerateConfig
from vae_core.training.records import EpochRecord


def test_config_prints_validated_json_with_overrides(capsys):
    assert main(["config", "train.epochs=3", "model.latent_dim=2"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["latent_dim"] == 2


def test_bad_override_exits_non_zero_and_names_the_key(capsys):
    assert main(["config", "train.epochz=3"]) == 2
    assert "unknown key 'epochz'" in capsys.readouterr().err


def test_override_values_are_parsed_by_the_field_type(capsys):
    overrides = [
        "name=2024",
        "data.id_column=007",
        "data.vector_column=null",
        "train.lr=0.01",
        "train.epochs=3",
    ]
    assert main(["config", *overrides]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (
        cfg["name"] == "2024" and cfg["data"]["id_column"] == "007" and cfg["data"]["vector_column"] is None
    )
    assert cfg["train"]["lr"] == 0.01 and cfg["train"]["epochs"] == 3


def test_config_schema_describes_every_key(capsys):
    assert main(["config", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    model = schema["$defs"]["ModelConfig"]["properties"]
    assert (
        model["likelihood"]["default"] == "auto" and "follows the data" in model["likelihood"]["description"]
    )
    assert set(schema["properties"]) == {"name", "data", "model", "train", "compute", "embed", "generate"}


def test_an_invalid_value_is_one_line_naming_the_key_and_debug_adds_the_traceback(capsys):
    assert main(["config", "train.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "vaeflow config: error: train.epochs: Input should be greater than or equal to 1 (got 0)"
    ]
    assert main(["config", "--debug", "train.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("(got 0)")
    assert main(["--debug", "config", "train.epochs=0"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_config_prints_secrets_redacted_at_any_depth(tmp_path, capsys):
    path = tmp_path / "c.json"
    options = {"secret": "top-secret", "client_kwargs": {"aws_secret_access_key": "deep-secret"}}
    path.write_text(json.dumps({"data": {"storage_options": options}}))
    assert main(["config", "--config", str(path), "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "top-secret" not in out and "deep-secret" not in out
    assert json.loads(out)["data"]["storage_options"] == {
        "secret": "***",
        "client_kwargs": {"aws_secret_access_key": "***"},
    }


def test_train_resumes_only_when_asked(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--resume" in out and "refused unless --resume" in " ".join(out.split())


def test_run_and_serve_are_documented_in_help(capsys):
    # `run` itself is the nightly flow end to end: tests/integration/test_flows.py runs it.
    for command in ("run", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "vae-nightly" in out and "--root" in out


def test_core_imports_neither_ray_nor_prefect():
    code = (
        "import sys, flows.cli, vae_core.training.checkpoints, vae_core.training.evaluation;"
        "import vae_core.training.inference, vae_core.training.loop;"
        "bad = [m for m in ('ray', 'prefect') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_validating_a_config_imports_neither_torch_nor_ray_nor_prefect(tmp_path):
    # `vaeflow config` stays fast (about half a second) because validation needs none of them.
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps({"model": {"family": "dae", "corruption": "mask"}, "embed": {"chunk_rows": 8}})
    )
    code = (
        "import sys, flows.cli;"
        f"assert flows.cli.main(['config', '--config', {str(path)!r}, 'generate.rows=7']) == 0;"
        "bad = [m for m in ('torch', 'ray', 'prefect') if m in sys.modules]; assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cfg = json.loads(done.stdout)
    assert (
        cfg["model"]["family"] == "dae" and cfg["embed"]["chunk_rows"] == 8 and cfg["generate"]["rows"] == 7
    )


_JOB = {
    "embed": ["embed", "--model", "m", "--input", "i", "--output", "o"],
    "generate": ["generate", "--model", "m", "--output", "o"],
    "train": ["train", "--config", "c.json"],
}


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "import", "mnist", "--out", "x"],
        ["data", "import", "mnist", "--output", "x", "--rows-per-shard", "10"],
        ["report", "--model", "m", "--data", "d"],
        ["report", "--model", "m", "--out", "o"],
        ["beta-study", "--data", "d"],
        ["beta-study", "--input", "d", "--out", "o"],
        [*_JOB["embed"], "--batch-size", "10"],
        [*_JOB["generate"], "--rows-per-block", "10"],
        [*_JOB["generate"], "--batch-size", "10"],
    ],
    ids=lambda argv: " ".join(a for a in argv if a.startswith("--"))[-40:],
)
def test_old_option_names_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err or "the following arguments are required" in err


def test_input_output_and_rows_per_file_are_the_names_everywhere():
    parse = build_parser().parse_args
    args = parse(["data", "import", "csv", "--input", "a.csv", "--output", "o", "--rows-per-file", "10"])
    assert (args.input, args.output, args.rows_per_file) == (["a.csv"], "o", 10)
    args = parse(["report", "--model", "m", "--input", "d", "--output", "o"])
    assert (args.input, args.output) == ("d", "o")
    args = parse(["beta-study", "--input", "d", "--output", "o"])
    assert (args.input, args.output) == ("d", "o")
    for command in ("embed", "generate"):
        args = vars(parse([*_JOB[command], "--rows-per-file", "7", "--chunk-rows", "5"]))
        assert (args["output"], args[f"{command}.rows_per_file"], args[f"{command}.chunk_rows"]) == (
            "o",
            7,
            5,
        )


@pytest.mark.parametrize("command", ["train", "embed", "generate"])
def test_every_job_command_has_the_same_compute_options(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--workers", "--cpus-per-worker", "--gpu, --no-gpu", "--config"):
        assert option in text, (command, option)
    args = build_parser().parse_args([*_JOB[command], "--workers", "3", "--gpu", "--cpus-per-worker", "2"])
    compute = {key: value for key, value in vars(args).items() if key.startswith("compute.")}
    assert compute == {"compute.num_workers": 3, "compute.use_gpu": True, "compute.cpus_per_worker": 2.0}


COMMITTED = SimpleNamespace(skipped=False, rows=3, version=0, table_uri="o")


def _fake_job(monkeypatch, module: str, function: str, result=COMMITTED) -> list[tuple[tuple, dict]]:
    """Replace vae_core.distributed.<module>.<function> (a Ray job) by one that records its call."""
    calls: list[tuple[tuple, dict]] = []

    def job(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    monkeypatch.setitem(sys.modules, f"vae_core.distributed.{module}", SimpleNamespace(**{function: job}))
    return calls


def _config_file(tmp_path, **sections) -> str:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(sections))
    return str(path)


def test_embed_settings_come_from_config_then_overrides_then_options(tmp_path, monkeypatch, capsys):
    calls = _fake_job(monkeypatch, "embed", "embed_corpus")
    options = {"key": "AKIA", "client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}
    config = _config_file(
        tmp_path,
        data={"storage_options": options},
        embed={"with_logvar": True, "chunk_rows": 9, "rows_per_file": 50},
        compute={"num_workers": 2, "data_cpus": 0.5, "torch_threads": 2},
    )
    argv = [*_JOB["embed"], "--config", config, "embed.chunk_rows=123", "compute.num_workers=4"]
    assert main([*argv, "--workers", "3", "--passthrough", "label", "--run-key", "k"]) == 0
    assert "3 rows: version 0 of the Delta table o" in capsys.readouterr().out
    [(args, kwargs)] = calls
    assert args == (
        "m",
        "i",
        "o",
        EmbedConfig(with_logvar=True, chunk_rows=123, rows_per_file=50, passthrough=["label"]),
        ComputeConfig(num_workers=3, data_cpus=0.5, torch_threads=2),
    )
    assert kwargs["storage_options"] == options and kwargs["run_key"] == "k" and kwargs["mode"] == "error"
    # An explicit option beats the override of the same setting; a bad value is a config error.
    assert main([*argv, "--chunk-rows", "7", "--no-with-logvar"]) == 0
    assert calls[-1][0][3] == EmbedConfig(with_logvar=False, chunk_rows=7, rows_per_file=50)
    assert main([*_JOB["embed"], "--chunk-rows", "0"]) == 2
    assert "chunk_rows" in capsys.readouterr().err


def test_generate_settings_come_from_config_then_overrides_then_options(tmp_path, monkeypatch):
    calls = _fake_job(monkeypatch, "generate", "generate_rows")
    config = _config_file(tmp_path, generate={"rows": 11, "seed": 5, "sample_likelihood": True})
    assert main([*_JOB["generate"], "--config", config, "generate.seed=6", "--decode", "mean", "--gpu"]) == 0
    assert main([*_JOB["generate"], "--rows", "20", "--rows-per-file", "4", "--cpus-per-worker", "0.5"]) == 0
    (first, kwargs), (second, _) = calls
    assert first == (
        "m",
        "o",
        GenerateConfig(rows=11, seed=6, sample_likelihood=False),
        ComputeConfig(use_gpu=True),
    )
    assert kwargs["storage_options"] is None  # none configured: the AWS environment
    assert second == ("m", "o", GenerateConfig(rows=20, rows_per_file=4), ComputeConfig(cpus_per_worker=0.5))


def test_train_settings_come_from_config_then_overrides_then_options(tmp_path, monkeypatch, capsys):
    meta = SimpleNamespace(val_elbo_init=-550.0)
    trained = SimpleNamespace(
        history=[EpochRecord.from_dict({"epoch": 1, "val_elbo": -120.0})],
        checkpoint=SimpleNamespace(meta=meta),
        checkpoint_uri="c",
        best_checkpoint_uri="b",
        best_reason="highest validation ELBO",
    )
    calls = _fake_job(monkeypatch, "trainer", "train_on_ray", trained)
    config = _config_file(tmp_path, compute={"num_workers": 2, "use_gpu": True, "torch_threads": 3})
    argv = ["train", "--config", config, "train.epochs=4", "--workers", "5", "--no-gpu", "--run-name", "r"]
    assert main(argv) == 0
    [((cfg,), kwargs)] = calls
    assert cfg.compute == ComputeConfig(num_workers=5, torch_threads=3) and cfg.train.epochs == 4
    assert kwargs["run_name"] == "r" and kwargs["resume"] is False
    assert "val ELBO -120.00 nats (before training -550.00)" in capsys.readouterr().out


def test_generate_match_shares_takes_column_names_into_the_config():
    args = build_parser().parse_args([*_JOB["generate"], "--match-shares", "income", "sex"])
    assert job_config(args).generate.match_shares == ["income", "sex"]
    assert job_config(build_parser().parse_args(_JOB["generate"])).generate.match_shares == []


def test_ctrl_c_ends_a_command_with_one_line_and_exit_130_leaving_no_partial_split(tmp_path):
    import select
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("vaeflow"))
    out = tmp_path / "mnist"
    proc = subprocess.Popen(
        [exe, "data", "import", "mnist", "--output", str(out), "--rows-per-file", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # the first line: the import has begun
        if select.select([proc.stdout], [], [], 1.0)[0] and proc.stdout.readline():
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "vaeflow data: interrupted" and "Traceback" not in err, err
    # A split is written whole or not at all: nothing under train/ unless it was complete.
    shards = sorted((out / "train").glob("*.parquet")) if (out / "train").exists() else []
    assert shards == [] or len(shards) == 120, len(shards)
