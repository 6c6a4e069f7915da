"""ptjf.config: gin search path, T5X-style flags, and gin errors a user can act on."""

from __future__ import annotations

import os
from pathlib import Path

import gin
import pytest

from ptjf import config as gin_config
from ptjf.errors import ConfigError
from ptjf.models.config import TransformerConfig

CHECKOUT_GIN = Path(gin_config.__file__).resolve().parent.parent / "gin_configs"


@gin.configurable("PtjfConfigTestModel")
def configured(emb_dim: int = 8, num_heads: int = 2, name: str = "none", flag: object = None):
    return {"emb_dim": emb_dim, "num_heads": num_heads, "name": name, "flag": flag}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def gin_dir(tmp_path, monkeypatch):
    """A private gin directory on $PTJF_GIN_PATH, and a working directory without gin files."""
    d = tmp_path / "gin"
    (d / "mine").mkdir(parents=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PTJF_GIN_PATH", str(d))
    return d


def write(d: Path, name: str, text: str) -> str:
    path = d / name
    path.write_text(text)
    return str(path)


# --- search path ------------------------------------------------------------------------------


def test_search_paths_are_checkout_then_cwd_then_env_without_missing_dirs(tmp_path, monkeypatch):
    a, b, cwd = tmp_path / "a", tmp_path / "b", tmp_path / "cwd"
    for d in (a, b, cwd):
        d.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(
        "PTJF_GIN_PATH", os.pathsep.join([str(a), str(tmp_path / "missing"), str(b), str(a)])
    )
    # No ptjf/gin_configs in a checkout: that entry is left out.
    assert gin_config.gin_search_paths() == [str(CHECKOUT_GIN), str(cwd), str(a), str(b)]


def test_resolve_finds_the_checkouts_model_file_with_or_without_suffix(gin_dir):
    tiny = str(CHECKOUT_GIN / "models" / "tiny.gin")
    assert gin_config.resolve_gin_file("models/tiny") == tiny
    assert gin_config.resolve_gin_file("models/tiny.gin") == tiny
    # T5X users name files relative to the repository.
    assert gin_config.resolve_gin_file("gin_configs/models/tiny.gin") == tiny
    assert gin_config.resolve_gin_file(tiny) == tiny


def test_resolve_finds_files_on_ptjf_gin_path(gin_dir):
    path = write(gin_dir / "mine", "exp.gin", "PtjfConfigTestModel.emb_dim = 3\n")
    assert gin_config.resolve_gin_file("mine/exp") == path


def test_missing_file_lists_search_paths_and_the_closest_name(gin_dir):
    write(gin_dir / "mine", "experiment.gin", "")
    with pytest.raises(ConfigError) as e:
        gin_config.resolve_gin_file("mine/experimnet")
    msg = str(e.value)
    assert "'mine/experimnet' not found" in msg
    assert str(gin_dir) in msg and str(CHECKOUT_GIN) in msg
    assert "Closest: mine/experiment.gin" in msg
    assert "PTJF_GIN_PATH" in msg


def test_missing_file_suggests_the_same_name_in_another_folder(gin_dir):
    with pytest.raises(ConfigError, match=r"Closest: .*runs/ptjf\.gin"):
        gin_config.resolve_gin_file("ptjf.gin")


# --- parsing and errors -----------------------------------------------------------------------


def test_files_then_flags_later_wins_and_reparsing_replaces(gin_dir):
    write(
        gin_dir / "mine",
        "a.gin",
        "PtjfConfigTestModel.emb_dim = 3\nPtjfConfigTestModel.num_heads = 4\n",
    )
    gin_config.parse_gin(["mine/a"], ["PtjfConfigTestModel.num_heads = 5"])
    assert configured() == {"emb_dim": 3, "num_heads": 5, "name": "none", "flag": None}
    gin_config.parse_gin([], ["PtjfConfigTestModel.name = 'b'"])  # no leftovers from the first
    assert configured() == {"emb_dim": 8, "num_heads": 2, "name": "b", "flag": None}


def test_include_is_found_on_the_search_path(gin_dir):
    write(gin_dir / "mine", "base.gin", "PtjfConfigTestModel.emb_dim = 7\n")
    write(
        gin_dir / "mine", "top.gin", "include 'mine/base.gin'\nPtjfConfigTestModel.num_heads = 1\n"
    )
    gin_config.parse_gin(["mine/top.gin"], [])
    assert configured()["emb_dim"] == 7 and configured()["num_heads"] == 1


def test_syntax_error_reports_file_and_line(gin_dir):
    path = write(
        gin_dir / "mine",
        "bad.gin",
        "# a comment\nPtjfConfigTestModel.emb_dim = 3\nPtjfConfigTestModel.num_heads = 3 4\n",
    )
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin(["mine/bad.gin"], [])
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: gin syntax error: Expected newline.")
    assert "PtjfConfigTestModel.num_heads = 3 4" in msg


def test_unclosed_bracket_in_a_file_or_flag_is_a_syntax_error(gin_dir):
    path = write(gin_dir / "mine", "open.gin", "PtjfConfigTestModel.flag = [1,\n")
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin(["mine/open"], [])
    assert str(e.value) == (
        f"{path}: gin syntax error: the input ends inside an unclosed bracket, parenthesis or string."
    )
    _, bindings, _ = gin_config.flags_to_gin(["--gin.PtjfConfigTestModel.flag=[1,"])
    with pytest.raises(
        ConfigError, match=r"^Gin syntax error in --gin\.PtjfConfigTestModel\.flag: "
    ):
        gin_config.parse_gin([], bindings)


def test_import_of_a_missing_module_names_the_line(gin_dir):
    path = write(gin_dir / "mine", "imp.gin", "import ptjf_config_test_no_such_module\n")
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin(["mine/imp"], [])
    assert str(e.value).startswith(
        f"Gin import failed ({path}:1): No module named 'ptjf_config_test_no_such_module'."
    )


def test_unknown_parameter_in_a_file_names_file_line_and_closest(gin_dir):
    path = write(
        gin_dir / "mine",
        "typo.gin",
        "PtjfConfigTestModel.emb_dim = 3\nPtjfConfigTestModel.num_haeds = 3\n",
    )
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin(["mine/typo"], [])
    assert str(e.value) == (
        f"Unknown gin binding 'PtjfConfigTestModel.num_haeds' ({path}:2): PtjfConfigTestModel "
        "has no parameter 'num_haeds'; closest: num_heads."
    )


def test_unknown_parameter_from_a_flag_names_the_flag_and_closest():
    assert TransformerConfig  # the real model config is registered at import
    _, bindings, _ = gin_config.flags_to_gin(["--gin.TransformerConfig.emd_dim=64"])
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin([], bindings)
    msg = str(e.value)
    assert msg.startswith(
        "Unknown gin binding 'TransformerConfig.emd_dim' (--gin.TransformerConfig.emd_dim): "
        "TransformerConfig has no parameter 'emd_dim'; closest: emb_dim"
    )


def test_error_in_an_included_file_shows_the_include_chain(gin_dir):
    base = write(gin_dir / "mine", "base.gin", "\nPtjfConfigTestModel.emb_dmi = 7\n")
    top = write(gin_dir / "mine", "top.gin", "include 'mine/base.gin'\n")
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin(["mine/top"], [])
    assert f"({base}:2, included from {top}:1)" in str(e.value)
    assert "closest: emb_dim" in str(e.value)


def test_unknown_configurable_from_file_and_flag_names_closest(gin_dir):
    path = write(gin_dir / "mine", "u.gin", "PtjfConfigTestModle.emb_dim = 3\n")
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin(["mine/u"], [])
    msg = str(e.value)
    assert msg.startswith(f"Unknown gin configurable 'PtjfConfigTestModle' ({path}:1)")
    assert "Closest registered: PtjfConfigTestModel" in msg
    with pytest.raises(
        ConfigError,
        match=r"'PtjfConfigTestModle' \(--gin\.PtjfConfigTestModle\.emb_dim\).*Closest registered: PtjfConfigTestModel",
    ):
        gin_config.parse_gin([], ["PtjfConfigTestModle.emb_dim = 3"])


def test_unknown_reference_names_closest(gin_dir):
    write(gin_dir / "mine", "r.gin", "PtjfConfigTestModel.flag = @PtjfConfigTestMode()\n")
    with pytest.raises(
        ConfigError,
        match=r"Unknown gin configurable 'PtjfConfigTestMode'.*Closest registered: PtjfConfigTestModel",
    ):
        gin_config.parse_gin(["mine/r"], [])


def test_undefined_macro_names_it_its_user_and_the_flag(gin_dir):
    write(gin_dir / "mine", "m.gin", "PtjfConfigTestModel.name = %RUN_NAME\n")
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin(["mine/m"], [])
    assert str(e.value) == (
        "Gin macro %RUN_NAME is referenced (used by PtjfConfigTestModel.name) but never bound. "
        "Bind it on the command line with --gin.RUN_NAME=VALUE or in a gin file with "
        "`RUN_NAME = VALUE`."
    )
    gin_config.parse_gin(["mine/m"], ["RUN_NAME = 'x'"])
    assert configured()["name"] == "x"


def test_required_macro_left_unset_says_which_flag_to_pass(gin_dir):
    write(
        gin_dir / "mine",
        "req.gin",
        "RUN_NAME = %gin.REQUIRED\nPtjfConfigTestModel.name = %RUN_NAME\n",
    )
    with pytest.raises(
        ConfigError, match=r"^Gin macro RUN_NAME is required .*Pass --gin\.RUN_NAME=VALUE"
    ):
        gin_config.parse_gin(["mine/req"], [])


def test_missing_include_names_the_including_line(gin_dir):
    top = write(gin_dir / "mine", "inc.gin", "include 'mine/nothere.gin'\n")
    with pytest.raises(ConfigError) as e:
        gin_config.parse_gin(["mine/inc"], [])
    assert str(e.value).startswith(
        f"{top}:1: include failed. Gin file 'mine/nothere.gin' not found."
    )


def test_missing_top_level_file_is_a_config_error(gin_dir):
    with pytest.raises(ConfigError, match="'mine/none' not found"):
        gin_config.parse_gin(["mine/none"], [])


# --- flags ------------------------------------------------------------------------------------


def test_flags_to_gin_on_a_t5x_command_line():
    argv = [
        "--gin_file=runs/ptjf.gin",
        "--gin_file",
        "models/tiny.gin",
        "--gin.MODEL_DIR=\"'/tmp/run'\"".replace('"', ""),  # the shell strips the outer quotes
        "--gin.BATCH_SIZE",
        "32",
        "--gin.MIXTURE_RATES={'a': 0.7, 'b': 0.3}",
        "--gin.pretrain/Stage.optimizer=@OptimizerConfig()",
        "--gin.FINETUNE_LEARNING_RATE=%LEARNING_RATE",
        "--verbose",
        "extra",
    ]
    files, bindings, rest = gin_config.flags_to_gin(argv)
    assert files == ["runs/ptjf.gin", "models/tiny.gin"]
    assert bindings == [
        "MODEL_DIR = '/tmp/run'",
        "BATCH_SIZE = 32",
        "MIXTURE_RATES = {'a': 0.7, 'b': 0.3}",
        "pretrain/Stage.optimizer = @OptimizerConfig()",
        "FINETUNE_LEARNING_RATE = %LEARNING_RATE",
    ]
    assert rest == ["--verbose", "extra"]


def test_bare_values_are_quoted_and_gin_literals_are_not():
    _, bindings, _ = gin_config.flags_to_gin(
        [
            "--gin.MODEL_DIR=/tmp/x y",
            "--gin.TASK=bible_en_fr_tl",
            "--gin.BUCKET=gs://b/run",
            "--gin.VERSION=1.5.3",
            "--gin.N=64",
            "--gin.LR=5e-4",
            "--gin.FLAG=True",
            "--gin.NOTHING=None",
        ]
    )
    assert bindings == [
        "MODEL_DIR = '/tmp/x y'",
        "TASK = 'bible_en_fr_tl'",
        "BUCKET = 'gs://b/run'",
        "VERSION = '1.5.3'",
        "N = 64",
        "LR = 5e-4",
        "FLAG = True",
        "NOTHING = None",
    ]


def test_an_auto_quoted_path_reaches_the_configurable(gin_dir):
    write(
        gin_dir / "mine",
        "p.gin",
        "MODEL_DIR = %gin.REQUIRED\nPtjfConfigTestModel.name = %MODEL_DIR\n",
    )
    files, bindings, _ = gin_config.flags_to_gin(
        ["--gin_file=mine/p", "--gin.MODEL_DIR=/tmp/my run", "--gin.PtjfConfigTestModel.emb_dim=16"]
    )
    gin_config.parse_gin(files, bindings)
    assert configured() == {"emb_dim": 16, "num_heads": 2, "name": "/tmp/my run", "flag": None}


def test_flag_without_a_value_is_a_config_error():
    with pytest.raises(ConfigError, match="--gin_file has no value"):
        gin_config.flags_to_gin(["--gin_file"])
    with pytest.raises(ConfigError, match=r"--gin\.MODEL_DIR has no value"):
        gin_config.flags_to_gin(["--gin.MODEL_DIR"])


# --- operative config -------------------------------------------------------------------------


def test_save_config_writes_the_operative_config(gin_dir, tmp_path):
    gin_config.parse_gin([], ["PtjfConfigTestModel.emb_dim = 12"])
    configured()
    path = gin_config.save_config(str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "config.gin")
    text = Path(path).read_text()
    assert "PtjfConfigTestModel.emb_dim = 12" in text
    assert text == gin_config.operative_config()


def test_save_config_to_an_unwritable_dir_names_the_flag(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"--gin\.MODEL_DIR="):
        gin_config.save_config(str(blocker / "run"))
