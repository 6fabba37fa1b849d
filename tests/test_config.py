"""Settings: CLI > TRAINER_* env > TOML > defaults; bad values exit 2 naming the setting."""

import subprocess
import sys

import pytest
from pydantic import BaseModel, Field

from trainer.config import DaemonConfig, load_config


def test_precedence_cli_over_env_over_toml(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('batch-size = 16\nlr = 0.5\nsteps = 7\nenv_id = "connect4"\n')
    env = {"TRAINER_CONFIG": str(toml), "TRAINER_LR": "0.25", "TRAINER_STEPS": "9"}
    cfg = load_config(DaemonConfig, ["--steps", "11"], environ=env)
    assert cfg.batch_size == 16  # TOML
    assert cfg.env_id == "connect4"  # TOML
    assert cfg.lr == 0.25  # env beats TOML
    assert cfg.steps == 11  # CLI beats env
    assert cfg.max_reuse == 4.0  # default: mature self-play trainers use about 4


def test_bool_flags_and_derived_checkpoint_dir():
    cfg = load_config(
        DaemonConfig, ["--no-augment", "--no-lr-schedule", "--model-dir", "/x/models"], environ={}
    )
    assert cfg.augment is False and cfg.lr_schedule is False
    assert str(cfg.checkpoint_dir) == "/x/checkpoints"
    assert load_config(DaemonConfig, [], environ={"TRAINER_AUGMENT": "false"}).augment is False


@pytest.mark.parametrize(
    "argv, env, needle",
    [
        (["--batch-size", "0"], {}, "--batch-size"),
        (["--lr", "fast"], {}, "--lr"),
        (["--device", "tpu"], {}, "--device"),
        ([], {"TRAINER_STEPS": "-1"}, "TRAINER_STEPS"),
        (["--lr-min-ratio", "2"], {}, "--lr-min-ratio"),
    ],
)
def test_invalid_value_exits_2_naming_the_setting(argv, env, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        load_config(DaemonConfig, argv, environ=env)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_unknown_toml_key_is_an_error(tmp_path, capsys):
    toml = tmp_path / "t.toml"
    toml.write_text("batch_sise = 3\n")
    with pytest.raises(SystemExit) as exc:
        load_config(DaemonConfig, ["--config", str(toml)], environ={})
    assert exc.value.code == 2 and "batch_sise" in capsys.readouterr().err


def test_help_documents_every_flag():
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--db",
        "--model-dir",
        "--stats",
        "--env-id",
        "--steps",
        "--batch-size",
        "--lr",
        "--weight-decay",
        "--grad-clip",
        "--checkpoint-interval",
        "--max-checkpoints",
        "--stats-interval",
        "--no-lr-schedule",
        "--lr-min-ratio",
        "--lr-warmup-steps",
        "--wait-interval",
        "--max-wait",
        "--device",
        "--log-level",
        "--threads",
        "--window",
        "--max-reuse",
        "--no-augment",
        "--net",
        "--lr-decay-steps",
        "--fresh",
    ):
        assert flag in out, flag


def test_cli_invalid_value_exit_code_2():
    r = subprocess.run(
        [sys.executable, "-m", "trainer", "--batch-size", "-5"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "--batch-size" in r.stderr and "Traceback" not in r.stderr


class NewSettings(BaseModel):
    """A model nobody has bounded: the loader's defaults still apply."""

    interval: float = 1.0
    count: int = 1
    big: int = Field(1, le=2**62)


@pytest.mark.parametrize(
    "argv, ok",
    [
        (["--interval", "inf"], False),
        (["--interval", "nan"], False),
        (["--interval=-inf"], False),
        (["--interval", "1e10"], False),
        (["--interval", "1e9"], True),
        (["--count", str(2**31)], False),
        (["--count", str(-(2**31))], False),
        (["--count", str(2**31 - 1)], True),
        (["--big", str(2**40)], True),  # a field's own bound replaces the default
    ],
)
def test_every_number_is_bounded_by_default(argv, ok, capsys):
    if ok:
        load_config(NewSettings, argv, environ={})
        return
    with pytest.raises(SystemExit) as exc:
        load_config(NewSettings, argv, environ={})
    err = capsys.readouterr().err.strip()
    flag = argv[0].split("=")[0]
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and f"invalid value for {flag}:" in err


def test_bounds_error_names_the_env_variable_or_toml_file(tmp_path, capsys):
    toml = tmp_path / "t.toml"
    toml.write_text("lr = inf\n")
    for argv, env, needle in (
        ([], {"TRAINER_POLL_INTERVAL": "inf"}, "TRAINER_POLL_INTERVAL"),
        (["--config", str(toml)], {}, f"--lr in {toml}"),
    ):
        with pytest.raises(SystemExit):
            load_config(DaemonConfig, argv, environ=env)
        assert needle in capsys.readouterr().err


def _actor_table():
    from actor_stub.config import GAME_DEFAULTS, ActorConfig

    return ActorConfig, GAME_DEFAULTS, "ACTOR_"


def _daemon_table():
    from trainer.config.daemon import GAME_DEFAULTS

    return DaemonConfig, GAME_DEFAULTS, "TRAINER_"


@pytest.mark.parametrize("table", [_actor_table, _daemon_table], ids=["actor", "daemon"])
def test_per_game_defaults_apply_only_to_settings_left_unset(table, tmp_path):
    Config, defaults, prefix = table()
    c4 = defaults["connect4"]

    def load(argv, environ=None):
        return load_config(Config, argv, environ=environ or {}, env_prefix=prefix)

    cfg = load(["--env-id", "connect4"])
    assert {k: getattr(cfg, k) for k in c4} == c4
    assert load([]).model_dump() == Config().model_dump()
    for name, value in c4.items():
        assert (
            getattr(Config(), name) == Config.model_fields[name].default != value
        )  # tic-tac-toe: the field's
        # A setting given anywhere wins over the game's default, even when it equals the field's default.
        field_default = str(Config.model_fields[name].default).lower()
        flag = "--" + name.replace("_", "-")
        given = [
            load(["--env-id", "connect4", flag, field_default]),
            load(["--env-id", "connect4"], environ={f"{prefix}{name.upper()}": field_default}),
        ]
        toml = tmp_path / f"{name}.toml"
        toml.write_text(f'env_id = "connect4"\n{name} = {field_default}\n')
        given.append(load(["--config", str(toml)]))
        for cfg in given:
            assert str(getattr(cfg, name)).lower() == field_default != str(value).lower()
    # Worker processes and ranks get the resolved settings as JSON: the game's defaults survive the trip.
    resolved = load(["--env-id", "connect4"])
    again = Config.model_validate_json(resolved.model_dump_json())
    assert {k: getattr(again, k) for k in c4} == c4
