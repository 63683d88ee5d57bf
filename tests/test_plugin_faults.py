"""Plugins that misbehave are named, and can never replace what facekit has built in.

A plugin's ``register_commands`` cannot replace a command facekit (or an earlier plugin) has,
with or without --strict; a plugin that raises facekit's own errors, registers something that is
not a spec, or whose reporter or architecture crashes later is named (entry point and package).
"""

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from facekit.cli import app
from facekit.errors import FacekitError
from facekit.plugins import PluginWarning, _command_names
from facekit.testing import make_fake_distribution


@pytest.fixture(autouse=True)
def _only_this_files_plugins(monkeypatch):
    """Leave out the plugins installed beside facekit (their commands would count here)."""
    packages = "facekit-impostor, facekit-sneaky, facekit-first, facekit-second, facekit-licensed, facekit-importer, facekit-odd, facekit-crashy, facekit-nothing, facekit-explosive"
    monkeypatch.setenv("FACEKIT_LOAD_PLUGINS", packages)


def _copy_of_app() -> typer.Typer:
    """A Typer app holding facekit's own commands, groups and root options (not the global one)."""
    cli = typer.Typer(cls=app.info.cls)  # facekit's error translation too
    cli.registered_commands = list(app.registered_commands)
    cli.registered_groups = list(app.registered_groups)
    cli.registered_callback = app.registered_callback
    return cli


BUILTIN_COMMANDS = sorted(_command_names(app.registered_commands, app.registered_groups))


def test_the_builtin_command_list_is_derived_from_the_app():
    assert {"train", "report", "predict", "data", "kernels", "demo", "plugins"} <= set(BUILTIN_COMMANDS)


REPLACER = """
from facekit import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command({name!r})
    def impostor():
        print("IMPOSTOR RAN")

    @cli.command("fresh-command")
    def fresh():
        print("fresh")
"""


@pytest.mark.parametrize("name", BUILTIN_COMMANDS)
def test_a_plugin_command_never_replaces_a_builtin_one(facekit_plugin, name):
    plugin_set = facekit_plugin(REPLACER.format(name=name), package="facekit-impostor")
    cli = _copy_of_app()
    before = [(c, dict(vars(c))) for c in cli.registered_commands]
    with pytest.warns(PluginWarning, match=rf"plugin 'facekit_impostor_plugin' from package facekit-impostor registers command '{name}'"):
        plugin_set.add_commands(cli)
    assert [(c, dict(vars(c))) for c in cli.registered_commands[: len(before)]] == before
    names = _command_names(cli.registered_commands, cli.registered_groups)
    assert names == set(BUILTIN_COMMANDS) | {"fresh-command"}, "the plugin's other, free command is kept"
    result = CliRunner().invoke(cli, [name, "--help"])
    assert "IMPOSTOR" not in result.output


def test_a_plugin_command_clash_is_an_error_when_strict(facekit_plugin):
    facekit_plugin("", package="facekit-nothing")  # a fresh plugin set, then a strict one
    with pytest.raises(FacekitError, match=r"plugin 'facekit_impostor_plugin' from package facekit-impostor registers command 'train'.*strict"):
        facekit_plugin(REPLACER.format(name="train"), package="facekit-impostor", strict=True).add_commands(_copy_of_app())


@pytest.mark.parametrize(
    "body, what",
    [
        # a nameless group merges its commands into the root: its 'report' would win
        ("sub = typer.Typer()\n    sub.command('report')(lambda: print('IMPOSTOR RAN'))\n    cli.add_typer(sub)", "command 'report'"),
        ("cli.registered_commands.clear()", "changed facekit's own commands"),
        ("cli.registered_commands[0].callback = lambda: print('IMPOSTOR RAN')", "changed facekit's own commands"),
        ("cli.callback()(lambda: print('IMPOSTOR RAN'))", "changed facekit's own root options"),
        # the built-in `data` group's own commands
        ("cli.registered_groups[0].typer_instance.command('check')(lambda: print('IMPOSTOR RAN'))", "changed facekit's own commands"),
    ],
)
def test_other_ways_to_replace_builtin_commands_are_refused(facekit_plugin, body, what):
    source = f"import typer\nfrom facekit import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n    {body}\n"
    plugin_set = facekit_plugin(source, package="facekit-sneaky")
    cli = _copy_of_app()
    with pytest.warns(PluginWarning, match=rf"plugin 'facekit_sneaky_plugin' from package facekit-sneaky .*{what}"):
        plugin_set.add_commands(cli)
    assert _command_names(cli.registered_commands, cli.registered_groups) == set(BUILTIN_COMMANDS)
    for args in (["report", "--help"], ["data", "check", "--help"], ["--help"]):
        assert "IMPOSTOR" not in CliRunner().invoke(cli, args).output


def test_two_plugins_cannot_take_the_same_command_name(facekit_plugin):
    facekit_plugin(REPLACER.format(name="greet"), package="facekit-first")
    both = facekit_plugin(REPLACER.format(name="greet2"), package="facekit-second")
    cli = _copy_of_app()
    with pytest.warns(PluginWarning) as warned:
        both.add_commands(cli)
    assert [str(w.message) for w in warned] == [
        "plugin 'facekit_second_plugin' from package facekit-second registers command 'fresh-command', "
        "which facekit or an earlier plugin already has; ignoring it"
    ]
    assert {"greet", "greet2", "fresh-command"} <= _command_names(cli.registered_commands, cli.registered_groups)


@pytest.mark.slow
def test_the_cli_refuses_a_replaced_command_end_to_end(tmp_path):
    """The real path: ``facekit report`` with an installed plugin that registers `report`."""
    site = make_fake_distribution(
        tmp_path / "site", "facekit-impostor", {"impostor_plugin": REPLACER.format(name="report")},
        {"impostor": "impostor_plugin"},
    )  # fmt: skip
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FACEKIT_CACHE_DIR": str(tmp_path / "c"),
           "FACEKIT_LOAD_PLUGINS": "facekit-impostor"}
    command = [sys.executable, "-m", "facekit", "report", "--runs-dir", str(tmp_path / "none")]
    plain = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "IMPOSTOR" not in plain.stdout
    assert "plugin 'impostor' from package facekit-impostor registers command 'report'" in plain.stderr
    assert plain.returncode != 0 and "runs" in plain.stderr, "the built-in report ran (and found no runs)"
    strict = subprocess.run([*command[:3], "--strict", *command[3:]], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert strict.returncode == 1 and "IMPOSTOR" not in strict.stdout
    assert strict.stderr.count("\n") == 1 and "plugin 'impostor' from package facekit-impostor" in strict.stderr


RAISES_FACEKIT_ERROR = """
from facekit.api import FacekitError, UsageError, hookimpl

@hookimpl
def register_architectures(register):
    raise {error}("the license file is missing")
"""


@pytest.mark.parametrize("error", ["FacekitError", "UsageError"])
def test_a_plugin_raising_facekits_own_error_is_named(facekit_plugin, error):
    source = RAISES_FACEKIT_ERROR.format(error=error)
    with pytest.warns(PluginWarning, match=r"plugin 'facekit_licensed_plugin' from package facekit-licensed failed in register_architectures: .*license"):
        plugin_set = facekit_plugin(source, package="facekit-licensed")
    assert "baseline" in plugin_set.registries["architectures"], "facekit still works without it"
    with pytest.raises(FacekitError, match=r"plugin 'facekit_licensed_plugin' from package facekit-licensed failed .*license.*strict"):
        facekit_plugin(source, package="facekit-licensed", strict=True)


def test_a_plugin_raising_facekit_error_on_import_is_named(facekit_plugin):
    with pytest.raises(FacekitError, match=r"plugin 'facekit_importer_plugin' from package facekit-importer failed to load: .*no GPU"):
        facekit_plugin("from facekit.api import FacekitError\nraise FacekitError('no GPU')\n", package="facekit-importer", strict=True)


@pytest.mark.parametrize(
    "registered, shown",
    [
        ("'just-a-name'", r"a str as an architecture, not an ArchitectureSpec; call register\(ArchitectureSpec\(...\)\)"),
        ("{'name': 'dict-net', 'build': None}", "a dict as an architecture"),
        ("ArchitectureSpec", "the class ArchitectureSpec"),
        ("LossSpec('a-loss-here', lambda counts: None)", "a LossSpec as an architecture"),
        ("ArchitectureSpec('nobuild', None)", r"an ArchitectureSpec as an architecture, not an ArchitectureSpec \(its build is not callable\)"),
    ],
)
def test_a_plugin_registering_a_non_spec_is_named(facekit_plugin, registered, shown):
    source = f"from facekit.api import ArchitectureSpec, LossSpec, hookimpl\n\n@hookimpl\ndef register_architectures(register):\n    register({registered})\n"
    with pytest.warns(PluginWarning, match=rf"plugin 'facekit_odd_plugin' from package facekit-odd registered {shown}"):
        plugin_set = facekit_plugin(source, package="facekit-odd")
    assert plugin_set.registries["architectures"].names() == sorted(
        n for n in plugin_set.registries["architectures"].names() if plugin_set.registries["architectures"].owner[n] != "facekit-odd"
    )
    with pytest.raises(FacekitError, match="facekit-odd"):
        facekit_plugin(source, package="facekit-odd", strict=True)


CRASHING = """
from facekit.api import ArchitectureSpec, FacekitError, ReporterSpec, hookimpl

def crash(context):
    return 1 / 0

def refuse(context):
    raise FacekitError("needs a GPU to draw")

def build(options):
    import numpy
    return numpy.linalg.inv(numpy.zeros((2, 2)))  # raises deep inside numpy

@hookimpl
def register_reporters(register):
    register(ReporterSpec("crashy", crash, "Divides by zero.", default=False))
    register(ReporterSpec("refuser", refuse, "Refuses.", default=False))

@hookimpl
def register_architectures(register):
    register(ArchitectureSpec("crashnet", build, "Fails to build."))
"""


@pytest.mark.parametrize(
    "reporter, shown",
    [
        ("crashy", "reporter 'crashy' (plugin 'facekit_crashy_plugin' from package facekit-crashy) failed: ZeroDivisionError"),
        ("refuser", "reporter 'refuser' (plugin 'facekit_crashy_plugin' from package facekit-crashy): needs a GPU to draw"),
    ],
)
def test_a_crashing_reporter_is_named(facekit_plugin, facekit_run, tmp_path, reporter, shown):
    facekit_plugin(CRASHING, package="facekit-crashy")
    result = CliRunner().invoke(app, ["report", str(facekit_run), "--reporter", reporter, "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert shown in result.output and "Traceback" not in result.output


def test_a_crashing_architecture_is_named(facekit_plugin, synthetic_dataset, tmp_path):
    facekit_plugin(CRASHING, package="facekit-crashy")
    result = CliRunner().invoke(
        app, ["train", "--data", str(synthetic_dataset), "--arch", "crashnet", "--out", str(tmp_path / "run"),
              "--epochs", "1", "--input-size", "32", "--loader", "torch", "--workers", "0", "--threads", "1", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "(in plugin 'facekit_crashy_plugin' from package facekit-crashy)" in result.output


def test_an_unforeseen_crash_in_a_plugin_command_blames_the_plugin(facekit_plugin):
    plugin_set = facekit_plugin(
        "from facekit import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n"
        "    @cli.command('explode')\n    def explode():\n        {}['missing']\n",
        package="facekit-explosive",
    )
    cli = _copy_of_app()
    plugin_set.add_commands(cli)
    result = CliRunner().invoke(cli, ["explode"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: unexpected KeyError: 'missing' (in plugin 'facekit_explosive_plugin' from package facekit-explosive)")
    assert "report it if the plugin is at fault" in result.output
