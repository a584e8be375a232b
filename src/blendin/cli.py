"""What every command-line entry point shares: logging to stderr, quiet transformers, and user
errors (BlendinError) printed as one clear line with exit code 2 instead of a traceback."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# The configs ship inside the package, so an installed wheel finds them (the checkout's conf/ links here).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def config_groups(*groups: str) -> str:
    """`group: option, option, ...` lines for a command's --help (the `blendin.groups` resolver in a
    config's hydra.help.template): only the groups that command uses, with the options conf/ has."""
    lines = []
    for entry in groups:
        group, _, usage = entry.partition(" ")  # "model as model@pair.base=NAME": the group, and how it is used
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"{group}: {', '.join(options)}" + (f"  (used as {usage.removeprefix('as ')})" if usage else ""))
    return "\n".join(lines)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("blendin.groups"):
        OmegaConf.register_new_resolver("blendin.groups", config_groups)


_register_resolvers()


def setup_logging() -> None:
    import transformers

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def call(fn, *args):
    """Run fn(*args) as a command: set up logging, and turn a BlendinError into `error: ...`, exit 2."""
    from .errors import BlendinError

    setup_logging()
    try:
        return fn(*args)
    except BlendinError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def refuse_unknown_keys(config_name: str, argv: list[str]) -> None:
    """Hydra answers an unknown key on the command line (`benchmark.nn=5`) with advice to add `+`; this
    names the key and the keys that exist instead, like the project's own checks, and exits with status 2.

    It composes the config once, for the overrides of the command's first job (a fraction of a second),
    and stays silent about any other problem, which Hydra then reports itself."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        args = get_args_parser().parse_args(argv)
        overrides = OverridesParser.create().parse_overrides(args.overrides)
        first_job = BasicSweeper.split_arguments(overrides, None)[0][0] if overrides else []
    except (SystemExit, HydraException, IndexError):
        return  # Hydra's own message for a malformed command line
    name = args.config_name or config_name
    # a multirun first composes the overrides that do not sweep, on the default choice of a swept group
    base = [o.input_line for o in overrides if not o.is_sweep_override()] if args.multirun else None
    message = None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        try:
            compose(config_name=name, overrides=first_job)
        except HydraException as err:
            message = unknown_key(name, first_job, err)
        else:
            if base is not None:
                try:
                    compose(config_name=name, overrides=base)
                except HydraException as err:
                    message = _unknown_before_sweep(name, base, overrides, err)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _unknown_before_sweep(config_name: str, base: list[str], overrides, err: Exception) -> str | None:
    """A key that the swept choices have and the default choice lacks (`-m method=blendin,forced
    method.lam=0.2`): Hydra composes the default first and stops there."""
    from hydra import compose

    if unknown_key(config_name, base, err) is None:
        return None
    key = next(o for o in base if o.split("=", 1)[0] == _overridden(str(err)))
    group = key.split(".")[0]
    default = compose(config_name=config_name, return_hydra_config=True).hydra.runtime.choices.get(group)
    swept = [o.input_line for o in overrides if o.is_sweep_override() and o.key_or_group == group]
    return (
        f"{key.split('=')[0]} is not a key of {group}={default}, the choice Hydra composes before it expands "
        f"the sweep ({' '.join(swept) or 'the experiment'}). Fix: ++{key} (sets the key where it exists and "
        "adds it where it does not; every job is then checked)"
    )


def _overridden(message: str) -> str:
    import re

    m = re.search(r"Could not override '([^']+)'", message)
    return m.group(1) if m else ""


def unknown_key(config_name: str, overrides: list[str], err: Exception) -> str | None:
    """'unknown config key K; known: ...' for a composition that failed on an override of a key the config
    lacks, else None. Call it where Hydra's compose works (an initialized config directory or a running app)."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key = _overridden(str(err))
    if not key or not isinstance(err.__cause__, (ConfigAttributeError, ConfigKeyError)):
        return None
    others = [o for o in overrides if o.split("=", 1)[0] != key]
    parent = key.rpartition(".")[0]
    try:
        cfg = compose(config_name=config_name, overrides=others, return_hydra_config=parent.startswith("hydra"))
    except HydraException:
        return f"unknown config key {key}"
    node = OmegaConf.select(cfg, parent) if parent else cfg
    known = sorted(node.keys()) if OmegaConf.is_dict(node) else []
    return f"unknown config key {key}" + (f"; known: {', '.join(str(k) for k in known)}" if known else "")
