"""Every command, config key, flag and file the documentation names exists, as a newcomer would find it.

The pages are README.md and every docs/*.md (copies of stored tool outputs in docs' sub-folders are
records, not instructions). From their code spans and code blocks the test collects:

- commands: `python -m X` (an importable module), `blendin-*` (a console script in pyproject.toml),
  `make T [VAR=...]` (a Makefile target and variable), `python scripts/x.py` / `bash scripts/x.sh`;
- for the project's own commands: each `--flag` must appear in that command's `--help`, and each
  `key=value` given to a Hydra command must compose with that command's config;
- config overrides anywhere (`method.tau=0.3`, `hydra/launcher=slurm`, `model@pair.base=gemma-2-9b`)
  and dotted keys (`benchmark.part`): a known group and option, or a key of some command's config;
- repository paths (`src/...`, `conf/...`, `docs/...`, `blendin/x.py`, ...) and Markdown links (with
  their #anchors); a file stored in the repository under `results/`, the tools' default output
  folder, must not be cited (a run with defaults would overwrite it: cited results live under docs/);
- `import` lines of Python blocks.

The `--help` of every project command the docs name must run, name the command as the docs write
it, offer only config groups that command uses, and name only keys that exist.
Placeholders (`pair=P`, `<name>`, `...`, `$VAR`) are checked for their key only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "blendin" / "conf"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Words that are not ours, each with the reason it is allowed.
ALLOWED_FLAGS: dict[str, str] = {}  # "command --flag": reason
ALLOWED_KEYS = {  # key=value words in the pages that are not the project's settings
    "do_sample": "lm-eval's generation setting (--gen_kwargs do_sample=True), passed through to the model",
    "add_bos_token": "a model_args setting of lm-eval's local-completions model (docs/serve.md)",
}
ALLOWED_HELP_WORDS = {  # key=value words of a --help that are not the project's keys
    "pretrained=gpt2": "lm-eval's own example in its help, for its hf model",
}
THIRD_PARTY_COMMANDS = {  # python -m X that the docs name and that are not the project's
    "pip": "installs packages",
    "venv": "creates a virtual environment",
    "pytest": "the test runner",
}
LAUNCHERS = ("torchrun", "accelerate", "deepspeed")  # run `-m module args` in several processes
HYDRA_FLAGS = {"-m", "--multirun", "--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve",
               "--package", "-p", "--run", "-r", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
               "-cd", "--shell-completion", "-sc", "--experimental-rerun"}  # fmt: skip
PLACEHOLDER_VALUES = {"value", "option", "val", "name"}  # key=value written as a pattern, not a setting
PLACEHOLDER = re.compile(r"^([A-Z][A-Z0-9_]*|<[^>]*>.*|.*<[^>]*>|\.\.\.|.*\$.*|\{.*\}|\[\.\.\.\])$")
REPO_ROOTS = ("src/", "conf/", "docs/", "scripts/", "tests/", "notebooks/", "results/", ".ci/")
SRC_ROOTS = ("blendin/", "analysis/")  # paths the docs write relative to src/
FILES = ("Makefile", "pyproject.toml", "README.md")
FILE_SUFFIXES = {"py", "md", "json", "jsonl", "yaml", "csv", "png", "pdf", "html", "parquet", "sh", "txt", "ipynb"}


# ------------------------------------------------------------------ reading the pages


def code_of(text: str) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """(blocks as (line, language, body), spans as (line, text)) of one Markdown page."""
    blocks = []
    for m in re.finditer(r"^```([\w-]*)\n(.*?)^```", text, re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1), m.group(2)))
    prose = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
    spans = [
        (prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose)
    ]
    return blocks, spans


def shell_lines(body: str) -> list[tuple[int, str]]:
    """Logical lines of a shell block (backslash continuations joined), comments removed."""
    lines, current, start = [], "", 0
    for n, raw in enumerate(body.splitlines()):
        if not current:
            start = n
        current += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
        if not raw.rstrip().endswith("\\"):
            lines.append((start, current))
            current = ""
    return lines


def words(command: str) -> list[str]:
    command = re.sub(r"(^|\s)#.*$", "", command)  # a trailing comment
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def commands_in(line: str) -> list[list[str]]:
    """The commands of one shell line (split at && ; | ||), each as words without leading VAR=value."""
    found = []
    line = re.sub(r"(^|\s)#.*$", "", line)  # a trailing comment, before a ';' inside it splits anything
    for part in re.split(r"&&|\|\||;|\|", line):
        tokens = words(part.strip().removeprefix("$ "))
        while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):  # environment assignments
            tokens = tokens[1:]
        if tokens and tokens[0] in LAUNCHERS and "-m" in tokens[:-1]:  # torchrun ... -m blendin.run ...
            tokens = ["python", *tokens[tokens.index("-m") :]]
        if (
            tokens
            and tokens[0] in ("python", "python3")
            or tokens
            and re.match(r"^(blendin-[a-z-]+|make|bash)$", tokens[0])
        ):
            found.append(tokens)
    return found


@cache
def pages() -> list[tuple[Path, list, list]]:
    return [(p, *code_of(p.read_text(encoding="utf-8"))) for p in PAGES]


@cache
def all_commands() -> list[tuple[str, list[str]]]:
    """(where, words) of every command the pages show, in blocks and in spans."""
    found = []
    for page, blocks, spans in pages():
        rel = page.relative_to(ROOT)
        for line, lang, body in blocks:
            if lang not in ("", "bash", "sh", "shell", "console"):
                continue
            for n, text in shell_lines(body):
                found += [(f"{rel}:{line + n}", c) for c in commands_in(text)]
        for line, text in spans:
            found += [(f"{rel}:{line}", c) for c in commands_in(text)]
    return found


# ------------------------------------------------------------------ what exists


@cache
def console_scripts_modules() -> dict[str, str]:
    """pyproject.toml's [project.scripts]: console script -> module."""
    section = re.search(r"^\[project\.scripts\].*?\n(.*?)(?=^\[)", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+):', section.group(1) if section else "", re.M))


def console_scripts() -> set[str]:
    return set(console_scripts_modules())


@cache
def make_targets() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z0-9_.-]+):(?!=)", text, re.M))
    variables = set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*[?:]?=", text, re.M))
    return targets, variables


def module_name(tokens: list[str]) -> str | None:
    if len(tokens) > 2 and tokens[0] in ("python", "python3") and tokens[1] == "-m":
        return tokens[2]
    if tokens[0] in console_scripts():
        return console_scripts_modules()[tokens[0]]
    return None


def ours(module: str) -> bool:
    return module.split(".")[0] in ("blendin", "analysis")


@cache
def hydra_config_name(module: str) -> str | None:
    """The config a Hydra command composes (read from its @hydra.main), or None for other commands."""
    spec = importlib.util.find_spec(module)
    source = Path(spec.origin).read_text() if spec and spec.origin else ""
    m = re.search(r"@hydra\.main\([^)]*config_name=\"([^\"]+)\"", source)
    return m.group(1) if m else None


def flatten(node, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            keys.add(path)
            try:
                child = node._get_node(key)
            except Exception:  # noqa: BLE001 - a node that cannot be read still names its key
                continue
            if isinstance(child, DictConfig):
                keys |= flatten(child, path + ".")
    return keys


class Configs:
    """Every Hydra config of the project, composed: the keys each command's config has (with every
    option of every group it uses), the groups and their options."""

    def __init__(self):
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            loader = GlobalHydra.instance().config_loader()

            def groups(parent=""):
                out = []
                for g in loader.list_groups(parent):
                    full = f"{parent}/{g}" if parent else g
                    out += [full, *groups(full)]
                return out

            self.options = {g: set(loader.get_group_options(g)) for g in groups()}
            self.primaries = sorted(p.stem for p in CONF.glob("*.yaml"))
            self.keys: dict[str, set[str]] = {}
            self.used_groups: dict[str, set[str]] = {}
            added: dict[tuple[str, str], set[str]] = {}  # (group choice, option) -> the keys it adds
            for primary in self.primaries:
                cfg = compose(primary, return_hydra_config=True)
                keys = flatten(cfg)
                choices = list(OmegaConf.to_container(cfg.hydra.runtime.choices))  # e.g. pair, model@pair.base
                used = {key.split("@")[0] for key in choices}
                self.used_groups[primary] = used | {key.split("/")[-1] for key in used}
                for choice in choices:  # every option of every group this config uses, composed once
                    for option in sorted(self.options.get(choice.split("@")[0], ())):
                        if (choice, option) not in added:
                            try:
                                with_option = flatten(
                                    compose(primary, [f"{choice}={option}"], return_hydra_config=True)
                                )
                            except Exception:  # noqa: BLE001 - an option that does not compose alone
                                with_option = set()
                            added[(choice, option)] = with_option - keys
                        keys |= added[(choice, option)]
                self.keys[primary] = keys
        GlobalHydra.instance().clear()

    @staticmethod
    def lm_eval_keys() -> set[str]:
        """The settings of the lm-eval model `blendin` (its --model_args), which pages name as key=value too."""
        from blendin.lm_eval import HARNESS_ARGS, METHOD_ARGS

        return {*HARNESS_ARGS, *METHOD_ARGS}

    def all_keys(self) -> set[str]:
        return set().union(*self.keys.values())

    def override_like(self, text: str) -> bool:
        """A code span that reads as one Hydra override (`key=value`, `group=option`) or a dotted config
        key (`benchmark.part`), not a path, a module, a file name or a sentence."""
        if " " in text or "==" in text or text.startswith(("-", "/", ".", "http")):
            return False
        key, eq, value = text.partition("=")
        key = key.lstrip("+~")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*([./@][a-z0-9_.]+)*", key) or (eq and not value):
            return False
        if "/" in key:
            return bool(eq) and key.split("@")[0] in self.options
        first, *rest = key.split("@")[0].split(".")
        if eq:
            return True
        return bool(rest) and first in self.all_keys() and rest[-1] not in FILE_SUFFIXES

    def check_model_args(self, text: str) -> list[str]:
        """`--model_args` of `python -m blendin.lm_eval`: each key one of GuidedLM's, a pair and a method that exist."""
        from blendin.lm_eval import HARNESS_ARGS, METHOD_ARGS

        problems = []
        for item in text.split(","):
            key, _, value = item.partition("=")
            if PLACEHOLDER.match(item) or PLACEHOLDER.match(value):
                continue
            if key not in (*HARNESS_ARGS, *METHOD_ARGS):
                problems.append(f"model_args {key}: not a setting of the blendin model")
            elif key in ("pair", "method") and value not in self.options[key]:
                problems.append(f"model_args {key}={value}: no such {key} (conf/{key}/)")
        return problems

    def check(self, override: str, primary: str | None = None, own_configs: bool = False) -> str | None:
        """None if `override` (key=value, group=option, +key, ~key or a bare dotted key) can be used
        with config `primary` (any config when None); else what is wrong. own_configs: the command puts
        a folder of the user's on the search path (hydra.searchpath), so a group may have more options."""
        keys = self.keys[primary] if primary else self.all_keys()
        where = f" of {primary}.yaml" if primary else ""
        text = override.strip("[]")
        if text.startswith(("+", "++")) or text.partition("=")[2] in PLACEHOLDER_VALUES:
            return None  # adds a key on purpose, or a pattern
        text = text.lstrip("~")
        key, _, value = text.partition("=")
        if "@" in key or "/" in key or key in self.options:  # a group choice
            group = key.split("@")[0]
            if group not in self.options:
                return f"no config group {group!r}"
            if primary and group not in self.used_groups[primary]:
                return f"config group {group!r} is not used by {primary}.yaml"
            for option in re.split(r"[,|]", value):
                if own_configs or not option or PLACEHOLDER.match(option) or option == "null":
                    continue
                if option not in self.options[group]:
                    return f"{group}={option}: no such option (conf/{group}/: {', '.join(sorted(self.options[group]))})"
            return None
        if PLACEHOLDER.match(key) or (primary is None and key in self.lm_eval_keys()) or key in ALLOWED_KEYS:
            return None
        if key not in keys:
            near = sorted(k for k in keys if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1])
            return f"no config key {key!r}{where}" + (f" (did you mean {', '.join(near[:3])}?)" if near else "")
        return None


@pytest.fixture(scope="module")
def configs() -> Configs:
    return Configs()


# ------------------------------------------------------------------ help texts


def help_text(command: tuple[str, ...]) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `<command> --help`, as a user gets it."""
    return helps()[command]


@cache
def helps() -> dict[tuple[str, ...], tuple[int, str]]:
    """--help of every project command the docs name. Hydra commands run as their own processes (all at
    once); the others run in this process (runpy, as `python -m` runs them), which is much faster."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    texts, running = {}, {}
    for inv in documented_invocations():
        module = inv[2] if inv[1] == "-m" else None
        if module and hydra_config_name(module):
            argv = [sys.executable, "-m", module, "--help"]
            running[inv] = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
            )
        else:
            texts[inv] = in_process_help(inv)
    for inv, process in running.items():
        out, _ = process.communicate(timeout=300)
        texts[inv] = (process.returncode, out)
    return texts


def in_process_help(inv: tuple[str, ...]) -> tuple[int, str]:
    import contextlib
    import io
    import runpy
    import warnings

    out = io.StringIO()
    argv, cwd = sys.argv, os.getcwd()
    status = 0
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before
            if inv[1] == "-m":
                sys.argv = [inv[2], "--help"]
                runpy.run_module(inv[2], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [inv[1], "--help"]
                runpy.run_path(str(ROOT / inv[1]), run_name="__main__")
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Exception as err:  # noqa: BLE001 - a crashing --help is a finding, not a test error
        status, out = 1, io.StringIO(out.getvalue() + f"{type(err).__name__}: {err}")
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return status, out.getvalue()


def invocation(tokens: list[str]) -> tuple[str, ...] | None:
    """The project command a doc command runs (python -m X, or python/bash scripts/x), without arguments."""
    module = module_name(tokens)
    if module and ours(module):
        return ("python", "-m", module)
    if tokens[0] in ("python", "python3", "bash") and len(tokens) > 1 and tokens[1].startswith("scripts/"):
        return (tokens[0], tokens[1])
    return None


@cache
def documented_invocations() -> list[tuple[str, ...]]:
    seen: dict[tuple[str, ...], None] = {}
    for _, tokens in all_commands():
        inv = invocation(tokens)
        if inv and not inv[-1].endswith(".sh") and not PLACEHOLDER.match(inv[-1].split(".")[-1].rstrip(":") or "..."):
            seen[inv] = None
    return list(seen)


# ------------------------------------------------------------------ the checks


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that does not exist, or not a module name
        return False


def test_commands_exist():
    problems = []
    targets, variables = make_targets()
    for where, tokens in all_commands():
        head = tokens[0]
        if head in ("python", "python3") and len(tokens) > 2 and tokens[1] == "-m":
            module = tokens[2]
            if PLACEHOLDER.match(module) or PLACEHOLDER.match(module.split(".")[-1]) or module in THIRD_PARTY_COMMANDS:
                continue
            if not _importable(module):
                problems.append(f"{where}: python -m {module}: no such module")
        elif head in ("python", "python3", "bash") and len(tokens) > 1 and tokens[1].startswith("scripts/"):
            if not (ROOT / tokens[1]).is_file():
                problems.append(f"{where}: {tokens[1]}: no such script")
        elif head.startswith("blendin-") and head not in console_scripts():
            problems.append(f"{where}: {head}: no such console script in pyproject.toml")
        elif head == "make":
            for word in tokens[1:]:
                name = word.split("=")[0]
                if "=" in word and name not in variables:
                    problems.append(f"{where}: make {word}: the Makefile has no variable {name}")
                elif "=" not in word and not word.startswith("-") and word not in targets:
                    problems.append(f"{where}: make {word}: no such target")
    assert not problems, "\n".join(problems)


def test_command_arguments_exist(configs):
    """Flags of the project's commands appear in their --help; overrides compose with their config."""
    problems = []
    for where, tokens in all_commands():
        inv = invocation(tokens)
        if inv is None or inv not in helps():
            continue
        module = inv[2] if inv[0].startswith("python") and inv[1] == "-m" else None
        primary = hydra_config_name(module) if module else None
        args = tokens[len(inv) :] if tokens[0] in ("python", "python3", "bash") else tokens[1:]
        status, text = help_text(inv)
        for previous, word in zip(["", *args], args):
            word = word.strip("[]")
            if previous in ("--model_args", "-a") and module == "blendin.lm_eval":
                problems += [f"{where}: {p}" for p in configs.check_model_args(word)]
            elif word.startswith("-"):
                flag = word.split("=")[0]
                if primary is not None:
                    if flag not in HYDRA_FLAGS:
                        problems.append(f"{where}: {' '.join(inv)} {flag}: not a flag of a Hydra command")
                elif f"{' '.join(inv)} {flag}" not in ALLOWED_FLAGS and not re.search(
                    rf"(^|[\s,\[]){re.escape(flag)}\b", text
                ):
                    problems.append(f"{where}: {' '.join(inv)} {flag}: its --help does not offer this flag")
            elif primary is not None and "=" in word and not PLACEHOLDER.match(word):
                problem = configs.check(word, primary, own_configs=any(a.startswith("hydra.searchpath=") for a in args))
                if problem:
                    problems.append(f"{where}: {' '.join(inv)} {word}: {problem}")
    assert not problems, "\n".join(problems)


def test_config_keys_exist(configs):
    """Overrides and dotted keys written anywhere in the pages exist (in some command's config)."""
    problems = []
    for page, blocks, spans in pages():
        rel = page.relative_to(ROOT)
        for line, text in spans:
            if configs.override_like(text):
                problem = configs.check(text)
                if problem:
                    problems.append(f"{rel}:{line}: `{text}`: {problem}")
    assert not problems, "\n".join(problems)


def repo_paths(text: str) -> list[str]:
    """Repository paths in a code span or block: src/..., conf/..., blendin/x.py, Makefile, ..."""
    found = []
    for token in re.findall(r"[\w.<>*{}$@/-]+", text):
        token = token.rstrip(".,:;)")
        if (
            token.startswith(REPO_ROOTS + SRC_ROOTS)
            and ("/" in token.strip("/") or token.endswith("/"))
            or token in FILES
        ):
            found.append(token)
    return found


@cache
def tracked_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    return set(listed)


def path_exists(path: str) -> bool:
    candidates = [path] + ([f"src/{path}"] if path.startswith(SRC_ROOTS) else [])
    for candidate in candidates:
        pattern = re.sub(r"<[^>]*>|\{[^}]*\}|\$\w+|\*+", "*", candidate).rstrip("/")
        if "*" in pattern:
            if any(ROOT.glob(pattern)) or any(ROOT.glob(pattern.replace(".json/.md", ".json"))):
                return True
        elif (ROOT / pattern).exists() or (ROOT / pattern.replace(".json/.md", ".json")).exists():
            return True
    return False


def test_paths_exist():
    problems = []
    tracked = tracked_files()
    for page, blocks, spans in pages():
        rel = page.relative_to(ROOT)
        texts = [(line, t) for line, t in spans] + [(line, body) for line, _, body in blocks]
        for line, text in texts:
            for path in repo_paths(text):
                if path.startswith("results/"):  # the tools' output folder: written, not cited
                    pattern = re.sub(r"<[^>]*>|\{[^}]*\}|\*+", "*", path).replace(".json/.md", ".json")
                    hits = [f for f in tracked if re.fullmatch(re.escape(pattern).replace(r"\*", "[^/]*"), f)]
                    if hits:
                        problems.append(
                            f"{rel}:{line}: {path}: cites {hits[0]}, a stored file in the tools' default output "
                            "folder (a run with defaults overwrites it): keep cited results under docs/"
                        )
                elif not path_exists(path):
                    problems.append(f"{rel}:{line}: {path}: no such file or folder in the repository")
    assert not problems, "\n".join(problems)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    slugs = set()
    for heading in re.findall(r"^#+\s+(.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        slugs.add(slug)
    return slugs


def test_links_resolve():
    problems = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            line = text.count("\n", 0, m.start()) + 1
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                problems.append(f"{page.relative_to(ROOT)}:{line}: link {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                problems.append(f"{page.relative_to(ROOT)}:{line}: link {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_python_imports():
    problems = []
    for page, blocks, _ in pages():
        for line, lang, body in blocks:
            if lang != "python":
                continue
            for n, text in enumerate(body.splitlines()):
                m = re.match(r"\s*from\s+([\w.]+)\s+import\s+([\w, ]+)", text) or re.match(
                    r"\s*import\s+([\w.]+)", text
                )
                if not m:
                    continue
                try:
                    module = importlib.import_module(m.group(1))
                except ImportError as err:
                    problems.append(f"{page.relative_to(ROOT)}:{line + n}: {text.strip()}: {err}")
                    continue
                for name in m.group(2).split(",") if m.lastindex == 2 else []:
                    if not hasattr(module, name.strip()):
                        problems.append(f"{page.relative_to(ROOT)}:{line + n}: {m.group(1)} has no {name.strip()}")
    assert not problems, "\n".join(problems)


def test_help_texts(configs):
    """The --help of every project command the docs name runs, names the command as the docs do,
    lists only the config groups that command uses, and names only keys and options that exist."""
    problems = []
    for inv in documented_invocations():
        name = " ".join(inv)
        status, text = help_text(inv)
        if status != 0:
            problems.append(f"{name} --help: exit status {status}: {text.strip().splitlines()[-1:]}")
            continue
        module = inv[2] if inv[1] == "-m" else None
        names = [f"python -m {module}", *(s for s, m in console_scripts_modules().items() if m == module)]
        if not module:
            names = [inv[1], Path(inv[1]).name]  # argparse shows a script as its file name
        usage = re.search(r"^usage: (.*)$", text, re.M)
        shown = usage.group(1) if usage else text
        if not any(n in shown for n in names):
            first = usage.group(0) if usage else (text.strip().splitlines() or [""])[0]
            problems.append(f"{name} --help never names the command as the docs write it ({first!r})")
        primary = hydra_config_name(module) if module else None
        listed = re.search(r"== Configuration groups ==\n.*?\n\n(.*?)\n\n", text, re.S)
        if primary and listed:
            for group in re.findall(r"^([\w/]+):", listed.group(1), re.M):
                if group not in configs.used_groups[primary]:
                    problems.append(f"{name} --help lists config group {group!r}, which {primary}.yaml never uses")
        usages = [m.start() for m in re.finditer(r"^usage: ", text, re.M)]
        own = text[: usages[1]] if len(usages) > 1 else text  # a second usage line: another program's help
        for word in re.findall(r"(?<![\w./-])([a-z_][\w.@/]*=[^\s,;)'\"`]+)", own):
            if "==" in word or word.startswith(("http", "--")) or not configs.override_like(word.rstrip(".")):
                continue
            if word in ALLOWED_HELP_WORDS or word.split("=")[1].rstrip(".") in ("value", "option"):
                continue
            problem = configs.check(word.rstrip("."), primary)
            if problem:
                problems.append(f"{name} --help: {word}: {problem}")
    assert not problems, "\n".join(problems)
