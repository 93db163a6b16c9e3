"""deploy/compose.yaml and deploy/Dockerfile, checked without a Docker engine.

No Docker engine runs on our machines (docs/decisions.md), so nothing here builds the
image or starts a container. Instead the files are read the way Compose and the app read
them: YAML (anchors and merge keys resolved), Compose's `${VAR}` interpolation, the app's
own `Settings` for every `METERING_*` variable, and the `metering` / `billing` command
lines parsed by the real CLI. Each check is a function that returns its problems; the
last test mutates the compose file to show that every check can fail.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import fnmatch
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import typer.core
import typer.main
import yaml  # type: ignore[import-untyped]

from metering.clickhouse.store import Target
from metering.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

# What the operator exports before `docker compose up` (test values). Any other variable
# Compose would interpolate is a mistake, typically a shell `$var` missing its `$$`.
OPERATOR_VARIABLES = {
    "METERING_API_SECRET": "s" * 40,
    "CLICKHOUSE_PASSWORD": "test-password-0123",
    "METERING_WEBHOOK_SIGNING_KEY": "k" * 40,
    "IMAGE_TAG": "test",
}
# Left unset, Compose must refuse to start (`${VAR:?message}`).
REQUIRED_VARIABLES = {"METERING_API_SECRET", "CLICKHOUSE_PASSWORD", "METERING_WEBHOOK_SIGNING_KEY"}

INFRASTRUCTURE = {"kafka", "redis", "clickhouse"}
APPLICATION = {"topics", "worker", "sink", "api", "billing", "notifier"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SETTING_NAMES = {f"METERING_{name.upper()}" for name in Settings.model_fields}

Compose = dict[str, Any]
Service = dict[str, Any]


# -- reading the files ---------------------------------------------------------------------
@cache
def _compose_text() -> str:
    return COMPOSE_FILE.read_text()


def load_compose() -> Compose:
    loaded = yaml.safe_load(_compose_text())
    assert isinstance(loaded, dict), "compose.yaml is not a mapping"
    return loaded


@pytest.fixture
def compose() -> Compose:
    return load_compose()


def services(compose: Compose) -> dict[str, Service]:
    found = compose.get("services")
    assert isinstance(found, dict) and found, "compose.yaml has no services"
    return found


def app_services(compose: Compose) -> dict[str, Service]:
    return {name: s for name, s in services(compose).items() if name in APPLICATION}


def long_running(service: Service) -> bool:
    return str(service.get("restart", "no")) not in {"no", "on-failure"}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def console_scripts() -> dict[str, str]:
    scripts: dict[str, str] = pyproject()["project"]["scripts"]
    return scripts


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction; continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (the image the services run)."""
    env: dict[str, str] = {}
    for keyword, rest in dockerfile():
        if keyword == "FROM":
            env = {}
        elif keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_entrypoint() -> list[str]:
    entrypoints = [rest for keyword, rest in dockerfile() if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    parsed = json.loads(entrypoints[-1])  # exec form: signals reach the process
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


# -- Compose interpolation -----------------------------------------------------------------
_TEMPLATE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<invalid>))"
)
_BRACED = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$"
)


class InterpolationError(ValueError):
    pass


def _substitute(text: str, env: Mapping[str, str], seen: list[str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            seen.append(match["named"])
            return env.get(match["named"], "")
        if match["braced"] is None:
            raise InterpolationError(f"invalid interpolation at {text[match.start() :]!r}")
        parts = _BRACED.match(match["braced"])
        if parts is None:
            raise InterpolationError(f"invalid interpolation ${{{match['braced']}}}")
        name, op, arg = parts["name"], parts["op"], parts["arg"] or ""
        seen.append(name)
        value = env.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and not value)):
            raise InterpolationError(f"required variable {name} is missing: {arg}")
        if op in (":-", "-") and (value is None or (op == ":-" and not value)):
            return arg
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return _TEMPLATE.sub(one, text)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """`node` with every string interpolated as Compose does (`$$` becomes `$`)."""
    if isinstance(node, str):
        return _substitute(node, env, [])
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {
        str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in env.items()
    }


def resolved(compose: Compose, env: Mapping[str, str] = OPERATOR_VARIABLES) -> Compose:
    result = interpolate(compose, env)
    assert isinstance(result, dict)
    return result


def argv(service: Service) -> list[str]:
    """What the container runs: entrypoint (the service's or the image's) + command."""

    def as_list(value: Any) -> list[str]:
        if value is None:
            return []
        return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]

    entrypoint = as_list(service["entrypoint"]) if "entrypoint" in service else None
    if entrypoint is None and "build" in service:
        entrypoint = image_entrypoint()
    return [*(entrypoint or []), *as_list(service.get("command"))]


def shell_script_variables(script: str) -> set[str]:
    """Variables a `sh -c` script reads (after Compose turned `$$` into `$`)."""
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", script))


# -- the CLI, for checking command lines ---------------------------------------------------
def cli(script: str) -> typer.core.TyperGroup:
    module, _, attribute = console_scripts()[script].partition(":")
    command = typer.main.get_command(getattr(importlib.import_module(module), attribute))
    assert isinstance(command, typer.core.TyperGroup)
    return command


def parse_command_line(args: list[str]) -> str:
    """Parse `metering …` / `billing …` with the real CLI (unknown commands or options,
    missing required ones, raise); returns the subcommand path, e.g. `metering api`."""
    script, *rest = args
    if script not in console_scripts():
        raise AssertionError(f"{script!r} is not a console script of pyproject.toml")
    command: Any = cli(script)
    path = [script]
    while isinstance(command, typer.core.TyperGroup):
        if not rest or rest[0].startswith("-"):
            if command.invoke_without_command:  # a group that runs itself (`notifier`)
                break
            raise AssertionError(f"{' '.join(args)}: no subcommand")
        sub = command.get_command(typer.Context(command, info_name=path[-1]), rest[0])
        if sub is None:
            raise AssertionError(f"{' '.join(args)}: no command {rest[0]!r}")
        command, path, rest = sub, [*path, rest[0]], rest[1:]
    try:
        command.make_context(path[-1], list(rest))
    except typer.TyperException as exc:
        raise AssertionError(f"{' '.join(args)}: {exc}") from exc
    return " ".join(path)


def python_problems(code: str) -> list[str]:
    """`python -c CODE`: it compiles and everything it imports exists."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"does not compile: {exc}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                try:
                    importlib.import_module(alias.name)
                except ImportError as exc:
                    problems.append(str(exc))
        elif isinstance(node, ast.ImportFrom) and node.module:
            try:
                module = importlib.import_module(node.module)
            except ImportError as exc:
                problems.append(str(exc))
                continue
            problems += [
                f"{node.module} has no {alias.name}"
                for alias in node.names
                if not hasattr(module, alias.name)
            ]
    return problems


def command_problems(name: str, service: Service) -> list[str]:
    """Whatever a service runs must exist: a console script with a real subcommand and
    options, `python -c` code whose imports exist, or a shell script whose `billing` /
    `metering` command lines parse."""
    args = argv(service)
    if not args:
        return [f"{name}: runs nothing"]
    try:
        if args[0] in console_scripts():
            parse_command_line(args)
        elif args[:2] == ["python", "-c"]:
            return [f"{name}: {p}" for p in python_problems(args[2])]
        elif args[0] in {"sh", "/bin/sh", "bash", "/bin/bash"} and args[1] == "-c":
            # commands the script runs (at the start of a line, or after if/then/&&/||)
            lines = re.findall(
                r"(?:^|\bif |\bthen |&& |\|\| )\s*((?:billing|metering) [^;\n]*)",
                args[2],
                flags=re.MULTILINE,
            )
            if not lines:
                return [f"{name}: the script runs no metering/billing command"]
            for line in lines:
                words = shlex.split(line.removesuffix("; then"))
                # shell variables stand for values: any placeholder of the right shape
                parse_command_line([w if "$" not in w else "2026-01" for w in words])
        else:
            return [f"{name}: unexpected program {args[0]!r}"]
    except AssertionError as exc:
        return [f"{name}: {exc}"]
    return []


def settings_of(service: Service, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a service's container sees: image ENV + its environment."""
    for key in list(os.environ):
        if key.startswith("METERING_"):
            monkeypatch.delenv(key)
    for key, value in {**image_env(), **environment(service)}.items():
        if key.startswith("METERING_"):
            monkeypatch.setenv(key, value)
    return Settings()


# -- the checks (each returns its problems) ------------------------------------------------
def image_problems(compose: Compose) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        if "image" not in service and "build" not in service:
            problems.append(f"{name}: neither image nor build")
        build = service.get("build")
        if build is not None:
            context = (DEPLOY / (build if isinstance(build, str) else build["context"])).resolve()
            dockerfile_path = context / (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            if context != ROOT:
                problems.append(f"{name}: build context {context} is not the repository root")
            if dockerfile_path.resolve() != DOCKERFILE:
                problems.append(f"{name}: builds {dockerfile_path}, not deploy/Dockerfile")
        elif name in APPLICATION:
            problems.append(f"{name}: an application service without the app build")
        image = service.get("image", "")
        if name in INFRASTRUCTURE and (":" not in image or image.endswith(":latest")):
            problems.append(f"{name}: image {image!r} is not pinned to a version")
    return problems


def settings_name_problems(compose: Compose) -> list[str]:
    """Every METERING_* variable the deployment sets or reads is a Settings field."""
    problems = []
    for name, service in services(compose).items():
        used = set(environment(service))
        for text in _strings(service):
            seen: list[str] = []
            with contextlib.suppress(InterpolationError):  # interpolation_problems reports it
                _substitute(text, OPERATOR_VARIABLES, seen)
            used |= set(seen)
        if argv(service)[:1] in (["sh"], ["/bin/sh"]):
            used |= shell_script_variables(interpolate(argv(service)[2], OPERATOR_VARIABLES))
        for text in _strings(service.get("healthcheck", {})):
            used |= shell_script_variables(_substitute(text, OPERATOR_VARIABLES, []))
        problems += [
            f"{name}: {var} is not a setting"
            for var in sorted(used)
            if var.startswith("METERING_") and var not in SETTING_NAMES
        ]
    problems += [
        f"Dockerfile: {var} is not a setting"
        for var in image_env()
        if var.startswith("METERING_") and var not in SETTING_NAMES
    ]
    return problems


def interpolation_problems(compose: Compose) -> list[str]:
    problems = []
    for text in _strings(compose):
        seen: list[str] = []
        try:
            _substitute(text, OPERATOR_VARIABLES, seen)
        except InterpolationError as exc:
            problems.append(f"{exc} in {text[:60]!r}")
        problems += [
            f"${var} is interpolated by Compose (a shell variable needs $$): {text[:60]!r}"
            for var in seen
            if var not in OPERATOR_VARIABLES
        ]
    for var in sorted(REQUIRED_VARIABLES):
        unset = {k: v for k, v in OPERATOR_VARIABLES.items() if k != var}
        try:
            resolved(compose, unset)
        except InterpolationError:
            continue
        problems.append(f"compose starts without {var}")
    return problems


def depends_on_problems(compose: Compose) -> list[str]:
    problems = []
    all_services = services(compose)
    graph: dict[str, list[str]] = {}
    for name, service in all_services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        graph[name] = list(depends)
        for target, spec in depends.items():
            condition = (spec or {}).get("condition", "service_started")
            if target not in all_services:
                problems.append(f"{name} depends on {target!r}, which is no service")
                continue
            if condition not in CONDITIONS:
                problems.append(f"{name} -> {target}: unknown condition {condition!r}")
            if condition == "service_healthy" and "healthcheck" not in all_services[target]:
                problems.append(f"{name} waits for {target} to be healthy; it has no healthcheck")
            if condition == "service_completed_successfully" and long_running(all_services[target]):
                problems.append(f"{name} waits for {target} to complete; it restarts forever")

    def visit(node: str, path: tuple[str, ...]) -> None:
        if node in path:
            problems.append(f"dependency cycle: {' -> '.join((*path, node))}")
            return
        for target in graph.get(node, []):
            visit(target, (*path, node))

    for name in graph:
        visit(name, ())
    return sorted(set(problems))


def app_environment_problems(compose: Compose) -> list[str]:
    problems = []
    required = {
        "METERING_KAFKA_BOOTSTRAP",
        "METERING_REDIS_URL",
        "METERING_CLICKHOUSE_URL",
        "METERING_API_SECRET",
    }
    for name, service in app_services(compose).items():
        env = environment(service)
        problems += [f"{name}: {var} not set" for var in sorted(required - set(env))]
        secret = env.get("METERING_API_SECRET", "")
        if not re.fullmatch(r"\$\{METERING_API_SECRET:\?[^}]+\}", secret):
            problems.append(f"{name}: METERING_API_SECRET is not ${{METERING_API_SECRET:?…}}")
        if long_running(service) and "healthcheck" not in service:
            problems.append(f"{name}: no healthcheck")
        if not service.get("depends_on"):
            problems.append(f"{name}: starts without waiting for anything")
    expected = APPLICATION | INFRASTRUCTURE
    problems += [f"missing service {s}" for s in sorted(expected - set(services(compose)))]
    return problems


def endpoint_problems(compose: Compose) -> list[str]:
    """The app's URLs name services of this file, on the ports and credentials they use."""
    problems = []
    doc = resolved(compose)
    all_services = services(doc)
    kafka_env = environment(all_services.get("kafka", {}))
    advertised = {
        listener.split("://", 1)[1]
        for listener in kafka_env.get("KAFKA_ADVERTISED_LISTENERS", "").split(",")
        if "://" in listener
    }
    ch_env = environment(all_services.get("clickhouse", {}))
    for name, service in app_services(doc).items():
        env = environment(service)
        bootstrap = env.get("METERING_KAFKA_BOOTSTRAP", "")
        for server in bootstrap.split(","):
            if server not in advertised:
                problems.append(f"{name}: Kafka {server} is not an advertised listener")
        redis = urlsplit(env.get("METERING_REDIS_URL", ""))
        if redis.hostname not in all_services or redis.scheme != "redis":
            problems.append(f"{name}: Redis URL {redis.geturl()!r} names no service")
        url = env.get("METERING_CLICKHOUSE_URL", "")
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname != "clickhouse" or parts.port != 8123:
            problems.append(f"{name}: ClickHouse URL is not the clickhouse service: {url!r}")
        if (parts.username, parts.password) != (
            ch_env.get("CLICKHOUSE_USER"),
            ch_env.get("CLICKHOUSE_PASSWORD"),
        ):
            problems.append(f"{name}: ClickHouse user/password differ from the server's")
        try:
            database = Target.parse(url).database
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if database != ch_env.get("CLICKHOUSE_DB"):
            problems.append(f"{name}: database {database!r} is not CLICKHOUSE_DB")
    return problems


def command_line_problems(compose: Compose) -> list[str]:
    problems = []
    for name, service in app_services(compose).items():
        problems += command_problems(name, interpolate(service, OPERATOR_VARIABLES))
        test = service.get("healthcheck", {}).get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            problems += [f"{name} healthcheck: {p}" for p in python_problems(test[3])]
    return problems


def runs(service: Service) -> str:
    try:
        return parse_command_line(argv(service))
    except (AssertionError, ValueError):
        return ""


def scaling_problems(compose: Compose) -> list[str]:
    problems = []
    all_services = services(compose)
    workers = [s for s in all_services.values() if runs(s) == "metering worker"]
    if len(workers) != 1:
        return [f"{len(workers)} services run `metering worker`, expected one (scaled)"]
    worker = workers[0]
    replicas = int(worker.get("deploy", {}).get("replicas", 1))
    if replicas <= 1:
        problems.append(f"the worker has {replicas} replica(s)")
    if "container_name" in worker or worker.get("ports"):
        problems.append("the worker has a container_name or host ports: it cannot scale")
    partitions = int(environment(worker).get("METERING_TOPIC_PARTITIONS", "12"))
    if partitions < replicas:
        problems.append(f"{replicas} workers but {partitions} partitions: some would idle")
    sink_in_worker = environment(worker).get("METERING_SINK_IN_WORKER", "true")
    sinks = [s for s in all_services.values() if runs(s) == "metering sink"]
    if sink_in_worker.lower() not in {"false", "0", "no", "off"}:
        problems.append("the workers also run the sink (METERING_SINK_IN_WORKER)")
    if not sinks:
        problems.append("nothing runs `metering sink`")
    billers = [
        n
        for n, s in all_services.items()
        if "billing run" in " ".join(argv(s))
        or runs(s) == "metering run"
        or (runs(s) == "metering api" and "--with-sink" in argv(s))
    ]
    if len(billers) != 1:
        problems.append(f"{len(billers)} services run the billing batch: {billers}")
    for biller in billers:
        if int(all_services[biller].get("deploy", {}).get("replicas", 1)) != 1:
            problems.append(f"{biller}: the billing batch must run once")
    return problems


def api_problems(compose: Compose) -> list[str]:
    apis = [(n, s) for n, s in services(compose).items() if runs(s) == "metering api"]
    if len(apis) != 1:
        return [f"{len(apis)} services run `metering api`"]
    name, api = apis[0]
    problems = []
    args = argv(api)
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    if host != "0.0.0.0":
        problems.append(f"{name} listens on {host}: unreachable from outside the container")
    port = int(
        args[args.index("--port") + 1]
        if "--port" in args
        else environment(api).get("METERING_HTTP_PORT", Settings.model_fields["http_port"].default)
    )
    published = {str(p).rsplit(":", 1)[-1].split("/")[0] for p in api.get("ports", [])}
    if port != 8080 or "8080" not in published:
        problems.append(f"{name} serves on {port}, publishes {sorted(published)}; expected 8080")
    health = " ".join(str(a) for a in api.get("healthcheck", {}).get("test", []))
    if f":{port}/" not in health:
        problems.append(f"{name}: the healthcheck does not call port {port}")
    return problems


# -- tests ---------------------------------------------------------------------------------
def test_compose_is_yaml_with_the_services(compose: Compose) -> None:
    assert set(services(compose)) == APPLICATION | INFRASTRUCTURE
    assert set(compose.get("volumes") or {}) >= {
        str(volume).split(":", 1)[0]
        for service in services(compose).values()
        for volume in service.get("volumes", [])
        if not str(volume).startswith((".", "/"))
    }, "a named volume is used but not declared"


def test_every_service_has_an_image_or_a_build_that_exists(compose: Compose) -> None:
    assert DOCKERFILE.is_file()
    assert image_problems(compose) == []


def test_every_metering_variable_is_a_setting(compose: Compose) -> None:
    assert settings_name_problems(compose) == []


def test_settings_of_every_app_service_validate(
    compose: Compose, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = resolved(compose)
    for name, service in app_services(doc).items():
        settings = settings_of(service, monkeypatch)  # raises on an invalid value
        assert settings.api_secret == OPERATOR_VARIABLES["METERING_API_SECRET"], name
        assert Target.parse(settings.resolved_clickhouse_url).embedded_path is None, (
            f"{name} would use an embedded chDB store"
        )
    worker = settings_of(services(doc)["worker"], monkeypatch)
    assert worker.sink_in_worker is False


def test_interpolation_uses_only_operator_variables(compose: Compose) -> None:
    assert interpolation_problems(compose) == []


def test_depends_on_targets_exist_and_conditions_can_be_met(compose: Compose) -> None:
    assert depends_on_problems(compose) == []


def test_app_services_have_endpoints_secret_and_healthchecks(compose: Compose) -> None:
    assert app_environment_problems(compose) == []


def test_endpoints_point_at_the_services(compose: Compose) -> None:
    assert endpoint_problems(compose) == []


def test_commands_exist(compose: Compose) -> None:
    assert command_line_problems(compose) == []


def test_workers_scale_and_the_batch_runs_once(compose: Compose) -> None:
    assert scaling_problems(compose) == []


def test_worker_and_sink_healthchecks_name_their_consumer_groups(compose: Compose) -> None:
    for name, setting in (("worker", "group_id"), ("sink", "sink_group_id")):
        test = services(compose)[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"] and test[4:] == [setting], name
        assert setting in Settings.model_fields


def test_api_listens_on_8080(compose: Compose) -> None:
    assert api_problems(compose) == []


def test_kafka_is_kraft_4_without_auto_topic_creation(compose: Compose) -> None:
    kafka = services(compose)["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"])
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["CLUSTER_ID"], "KRaft needs a cluster id"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    mounts = {str(v).split(":")[1] for v in kafka.get("volumes", [])}
    assert env["KAFKA_LOG_DIRS"] in mounts, "the log of record must be on a volume"


def test_redis_is_7_and_append_only(compose: Compose) -> None:
    redis = services(compose)["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert any(str(v).endswith(":/data") for v in redis.get("volumes", []))


def test_dockerfile_builds_the_package_without_dev_dependencies() -> None:
    instructions = dockerfile()
    args = {k: v for k, _, v in (rest.partition("=") for key, rest in instructions if key == "ARG")}
    bases = [
        re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), rest.split()[0])
        for key, rest in instructions
        if key == "FROM"
    ]
    assert bases and bases[-1] == "python:3.11-slim"
    runs_ = " ".join(rest for key, rest in instructions if key == "RUN")
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", runs_)
    assert "[dev]" not in runs_ and ".[" not in runs_
    users = [rest for key, rest in instructions if key == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "runs as root"
    # everything `pip install .` reads is copied in: pyproject, its readme, the packages
    copied = {
        part.rstrip("/")
        for key, rest in instructions
        if key == "COPY" and not rest.startswith("--from")
        for part in rest.split()[:-1]
    }
    project = pyproject()
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", "constraints.txt", project["project"]["readme"]} <= copied
    assert packages <= copied, f"packages not copied: {packages - copied}"
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: not in the repository"


def test_dockerfile_entrypoint_is_a_console_script() -> None:
    entrypoint = image_entrypoint()
    assert entrypoint == ["metering"]
    assert entrypoint[0] in console_scripts()
    assert "billing" in console_scripts()


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            bare = pattern.lstrip("!").strip("/")
            if fnmatch.fnmatch(path, bare) or fnmatch.fnmatch(path, bare.removeprefix("**/")):
                result = not negated
        return result

    for path in (".venv", "var", ".git", "__pycache__", "metering-enforcement-data"):
        assert ignored(path), f"{path} is sent to the build"
    for path in ("pyproject.toml", "constraints.txt", "README.md", "schemas", "billing"):
        assert not ignored(path), f"{path} is needed by the build"
    assert not ignored("metering")


_IMPORT_ALL_WITHOUT = """
import importlib, importlib.abc, pkgutil, sys
blocked = set(sys.argv[1:])
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Absent())
for package in ("schemas", "billing", "metering"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            print(f"{info.name}: {exc}")
"""


def test_the_app_imports_without_dev_dependencies() -> None:
    """The image installs no dev dependencies (`pip install .`): no module of the
    packages may need one at import time, or `metering` itself fails to start."""
    project = pyproject()["project"]

    def module(requirement: str) -> str:
        return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("-", "_")

    runtime = {module(r) for r in project["dependencies"]}
    dev_only = sorted({module(r) for r in project["optional-dependencies"]["dev"]} - runtime)
    assert dev_only, "no dev dependencies to check"
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL_WITHOUT, *dev_only],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    assert result.stdout == "", f"modules that need a dev dependency:\n{result.stdout}"


# -- the checks can fail -------------------------------------------------------------------
def _set(path: str, value: Any) -> Callable[[Compose], None]:
    def mutate(doc: Compose) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return mutate


def _drop(path: str) -> Callable[[Compose], None]:
    def mutate(doc: Compose) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


MUTATIONS: list[tuple[str, Callable[[Compose], None], Callable[[Compose], list[str]]]] = [
    (
        "typo in a setting",
        _set("services.sink.environment.METERING_SINK_BATCH_ROW", "9"),
        settings_name_problems,
    ),
    ("unknown dependency", _set("services.api.depends_on.redis-cache", {}), depends_on_problems),
    (
        "healthy-wait on a service without healthcheck",
        _drop("services.redis.healthcheck"),
        depends_on_problems,
    ),
    ("single worker", _set("services.worker.deploy.replicas", 1), scaling_problems),
    (
        "worker runs its own sink",
        _set("services.worker.environment.METERING_SINK_IN_WORKER", "true"),
        scaling_problems,
    ),
    (
        "a second biller",
        _set("services.api.command", ["api", "--host", "0.0.0.0", "--with-sink"]),
        scaling_problems,
    ),
    ("api on loopback", _set("services.api.command", ["api"]), api_problems),
    ("api on another port", _set("services.api.ports", ["9090:9090"]), api_problems),
    ("no such subcommand", _set("services.sink.command", ["sinc"]), command_line_problems),
    (
        "no such option",
        _set("services.api.command", ["api", "--hots", "0.0.0.0"]),
        command_line_problems,
    ),
    (
        "unescaped shell variable",
        _set("services.billing.command", ["billing run --month $m"]),
        interpolation_problems,
    ),
    (
        "secret with a default",
        _set("services.api.environment.METERING_API_SECRET", "${METERING_API_SECRET:-changeme}"),
        app_environment_problems,
    ),
    (
        "wrong ClickHouse password",
        _set(
            "services.sink.environment.METERING_CLICKHOUSE_URL",
            "http://metering:x@clickhouse:8123/metering",
        ),
        endpoint_problems,
    ),
    (
        "Kafka host typo",
        _set("services.worker.environment.METERING_KAFKA_BOOTSTRAP", "kafak:9092"),
        endpoint_problems,
    ),
    ("missing healthcheck", _drop("services.sink.healthcheck"), app_environment_problems),
    ("unpinned image", _set("services.redis.image", "redis"), image_problems),
]


@pytest.mark.parametrize(
    ("mutate", "check"), [(m, c) for _, m, c in MUTATIONS], ids=[i for i, _, _ in MUTATIONS]
)
def test_each_check_fails_on_a_broken_file(
    compose: Compose,
    mutate: Callable[[Compose], None],
    check: Callable[[Compose], list[str]],
) -> None:
    assert check(compose) == []
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert check(broken), "the check did not notice"
