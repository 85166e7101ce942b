"""Dockerfile, docker-compose.yml and deploy/ agree with each other and with the app.

Docker cannot run here, so these tests read the files: the Dockerfile's stages, user, port,
healthcheck (run for real against a live gateway), cache and config; every setting the compose
file gives the replicas goes through load_settings, each enabled plugin's Settings model and
create_app; nginx must proxy the API unbuffered to exactly the replicas, and Prometheus must
scrape each replica's metrics path on its port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from nanochat_gateway.app import create_app
from nanochat_gateway.config import ENV_PREFIX, Settings, load_settings
from nanochat_gateway.model.hub import parse_hf_source
from nanochat_gateway.plugins import plugin_table_name, resolve_plugin_class
from nanochat_gateway.state import STATE

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"


# --- Dockerfile ----------------------------------------------------------------------------------


@dataclass
class Instruction:
    cmd: str
    flags: dict[str, str]
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT/VOLUME (the shell form is not used in this Dockerfile)."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"line {self.line}: expected the exec (JSON) form"
        return value


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction:
        found = self.all(cmd)
        assert found, f"stage {self.name} has no {cmd}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for item in shlex.split(instruction.args):
                key, sep, value = item.partition("=")
                assert sep, f"line {instruction.line}: use ENV key=value"
                values[key] = value
        return values

    def runs(self) -> str:
        return "\n".join(i.args for i in self.all("RUN"))


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): continuation lines joined, comments dropped, --flags split off."""
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        cmd, _, rest = line.partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        instruction = Instruction(cmd.upper(), flags, rest, number)
        if instruction.cmd == "FROM":
            parts = rest.split()
            assert len(parts) == 3 and parts[1].upper() == "AS", f"line {number}: name every stage (FROM x AS name)"
            stages.append(Stage(parts[2], parts[0]))
        elif not stages:
            assert instruction.cmd == "ARG", f"line {number}: only ARG may come before the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((REPO / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def stages(dockerfile) -> dict[str, Stage]:
    return {stage.name: stage for stage in dockerfile[1]}


@pytest.fixture(scope="module")
def runtime(dockerfile) -> Stage:
    return dockerfile[1][-1]


def arg_default(stage: Stage, name: str) -> str:
    for instruction in stage.all("ARG"):
        key, _, default = instruction.args.partition("=")
        if key == name:
            return default.strip('"')
    raise AssertionError(f"stage {stage.name} declares no ARG {name}")


def serve_command(runtime: Stage) -> list[str]:
    return runtime.last("ENTRYPOINT").exec_form() + runtime.last("CMD").exec_form()


def config_path(runtime: Stage) -> str:
    command = serve_command(runtime)
    assert command[:2] == ["nanochat-gateway", "serve"] and "--config" in command, command
    return command[command.index("--config") + 1]


def gateway_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def image_settings(runtime: Stage) -> Settings:
    """The settings the image runs with: its baked config plus its NANOCHAT_GATEWAY__ variables."""
    return load_settings(REPO / baked_config(runtime), env=gateway_env(runtime.env()))


def baked_config(runtime: Stage) -> str:
    target = config_path(runtime)
    for copy in runtime.all("COPY"):
        *sources, destination = copy.args.split()
        if destination == target and "from" not in copy.flags:
            assert len(sources) == 1
            return sources[0]
    raise AssertionError(f"no COPY puts a config file at {target}")


def test_dockerfile_stages(dockerfile, stages, runtime):
    global_args, ordered = dockerfile
    assert [s.name for s in ordered] == ["wheel", "venv", "model", "runtime"]
    assert runtime.name == "runtime"
    seen: set[str] = set()
    for stage in ordered:
        base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], stage.base)
        assert base in seen or re.fullmatch(r"[\w./-]+:[\w.-]+", base), f"{stage.name}: pin the base image"
        assert not base.endswith(":latest")
        for copy in stage.all("COPY"):
            if "from" in copy.flags:
                assert copy.flags["from"] in seen, f"line {copy.line}: --from names an earlier stage"
        seen.add(stage.name)
    assert "python:3.11" in global_args["PYTHON_IMAGE"]  # pyproject: requires-python >= 3.11


def test_the_package_is_installed_from_its_wheel(stages):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    copied = {source for copy in stages["wheel"].all("COPY") for source in copy.args.split()[:-1]}
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"the wheel stage must copy the {pattern} packages"
    assert "pip wheel" in stages["wheel"].runs() and "--wheel-dir /dist" in stages["wheel"].runs()

    venv = stages["venv"]
    assert any(c.flags.get("from") == "wheel" and c.args.split()[0] == "/dist" for c in venv.all("COPY"))
    install = venv.runs()
    assert re.search(r'pip install -c /tmp/constraints\.txt "\$\(echo /tmp/dist/\*\.whl\)\[redis\]"', install)
    assert "constraints.txt" in {c.args.split()[0] for c in venv.all("COPY")}
    for stage in stages.values():  # never the source tree itself
        assert not re.search(r"pip install[^\n]*( -e | \.(\s|$))", stage.runs()), stage.name


def test_cpu_by_default_cuda_by_build_argument(stages):
    venv = stages["venv"]
    assert arg_default(venv, "TORCH_VARIANT") == "cpu"
    assert 'pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in venv.runs()
    header = (REPO / "Dockerfile").read_text(encoding="utf-8").split("\nARG ", 1)[0]
    assert "--build-arg TORCH_VARIANT=cu" in header  # the comment says how to build the CUDA image


def test_a_model_can_be_baked_into_the_cache(stages, runtime):
    model = stages["model"]
    assert model.base == "venv"
    assert arg_default(model, "BAKE_MODEL") == ""
    assert 'nanochat-gateway download "$BAKE_MODEL"' in model.runs()
    bake = model.last("RUN")
    assert bake.flags["mount"].startswith("type=secret,id=hf_token"), "a token is a secret, not a build argument"
    assert "ARG HF_TOKEN" not in (REPO / "Dockerfile").read_text(encoding="utf-8")
    env = runtime.env()
    assert model.env()["HF_HOME"] == env["HF_HOME"] and model.env()["XDG_CACHE_HOME"] == env["XDG_CACHE_HOME"]
    copy = next(c for c in runtime.all("COPY") if c.flags.get("from") == "model")
    assert copy.args.split() == [env["XDG_CACHE_HOME"], env["XDG_CACHE_HOME"]]


def test_runtime_user_volume_and_command(runtime):
    user = runtime.last("USER").args
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    assert re.search(rf"useradd [^\n]*\b{re.escape(user)}$", runtime.runs(), re.M), "the user is created here"
    chown = next(c for c in runtime.all("COPY") if c.flags.get("from") == "model").flags.get("chown", "")
    assert chown.split(":")[0] == user, "the cache must be writable by the user"

    volumes = runtime.last("VOLUME").exec_form()
    env = runtime.env()
    for variable in ("HF_HOME", "XDG_CACHE_HOME"):
        assert any(Path(env[variable]).is_relative_to(v) for v in volumes), f"{variable} is not on a volume"
    assert env["PATH"].startswith("/opt/venv/bin:")

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "nanochat-gateway" in pyproject["project"]["scripts"]
    assert config_path(runtime) == "/etc/nanochat-gateway/config.toml"
    assert baked_config(runtime) == "config.toml"


def test_exposed_port_is_the_port_the_image_listens_on(runtime):
    settings = image_settings(runtime)
    assert settings.server.host == "0.0.0.0"
    assert runtime.last("EXPOSE").args.split() == [str(settings.server.port)]
    assert runtime.last("STOPSIGNAL").args == "SIGTERM"


def healthcheck_probe(runtime: Stage) -> tuple[list[str], dict[str, str]]:
    check = runtime.last("HEALTHCHECK")
    assert check.args.startswith("CMD [")
    command = json.loads(check.args.removeprefix("CMD "))
    assert command[:2] == ["python", "-c"]
    assert float(check.flags["start-period"].rstrip("s")) >= 300, "a first start may download the model"
    return command, check.flags


def test_healthcheck_asks_the_readiness_route(runtime):
    command, _ = healthcheck_probe(runtime)
    match = re.search(r"os\.environ\.get\('(\w+)', '(\d+)'\) \+ '(/[\w/]+)'", command[2])
    assert match, command[2]
    variable, default_port, path = match.groups()
    assert variable == ENV_PREFIX + "SERVER__PORT" and runtime.env()[variable] == default_port
    app = create_app(image_settings(runtime).model_copy(update={"plugins": Settings().plugins}))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert path == "/ready" and ("GET", "/ready") in routes


async def test_healthcheck_command_against_a_live_gateway(runtime, start_gateway):
    command, flags = healthcheck_probe(runtime)
    gateway = await start_gateway()
    env = {"PATH": "/usr/bin:/bin", ENV_PREFIX + "SERVER__PORT": str(gateway.server.port)}

    async def probe() -> int:
        process = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env,
                                                       stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(process.wait(), float(flags["timeout"].rstrip("s")))

    assert await probe() == 0
    gateway.app[STATE].draining = True  # what SIGTERM does first
    try:
        assert await probe() != 0
    finally:
        gateway.app[STATE].draining = False


def dockerignore_regex(pattern: str) -> re.Pattern:
    """Docker's matching: `*` and `?` stay within one path element, `**` spans any number of them."""
    out = []
    for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out.append({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part)))
    return re.compile("".join(out))


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``path`` out: a match on it or on a parent folder; `!` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        regex = dockerignore_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            result = not pattern.startswith("!")
    return result


def test_dockerignore_keeps_what_the_build_copies(dockerfile):
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for stage in dockerfile[1]:
        for copy in stage.all("COPY"):
            if "from" in copy.flags:
                continue
            for source in copy.args.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
                for path in (REPO / source).rglob("*.py") if (REPO / source).is_dir() else ():
                    assert not ignored(str(path.relative_to(REPO)), patterns), path
    for path in (".git", ".venv", "tests/test_hub.py", "model_000700.pt", "ckpt/tokenizer.pkl", ".env",
                 "nanochat_gateway/__pycache__/app.cpython-311.pyc"):
        assert ignored(path, patterns), f"{path} belongs outside the build context"


# --- docker-compose.yml ----------------------------------------------------------------------------


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, as if no variable were set (the file's defaults)."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value).replace("$$", "$")


def environment(service: dict) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {k: interpolate(str(v)) for k, v in raw.items()}


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source (a named volume, or a path relative to the compose file)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = volume["source"]
        else:
            source, target, *_ = volume.split(":")
            found[target] = source
    return found


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, duration
    return sum(float(amount) * units[unit] for amount, unit in parts)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def replicas(compose) -> dict[str, dict]:
    """The services built from this repository's Dockerfile."""
    found = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        if context is not None and (COMPOSE.parent / context).resolve() == REPO:
            assert (build if isinstance(build, str) else build.get("dockerfile", "Dockerfile")) in (".", "Dockerfile")
            found[name] = service
    return found


@dataclass
class Replica:
    name: str
    service: dict
    config_file: Path
    env: dict[str, str]
    settings: Settings
    app: Any


@pytest.fixture
def replica_apps(replicas, runtime, monkeypatch) -> list[Replica]:
    """Each replica's settings, exactly as its container would load them, and the app they build."""
    loaded = []
    for name, service in replicas.items():
        assert "command" not in service and "entrypoint" not in service, "replicas run the image's command"
        env = {**runtime.env(), **environment(service)}
        target = config_path(runtime)
        source = mounts(service).get(target)
        config_file = (COMPOSE.parent / source).resolve() if source else REPO / baked_config(runtime)
        assert config_file.is_file(), f"{name}: {source} is not a file"
        settings = load_settings(config_file, env=gateway_env(env))
        for plugin in settings.plugins.enabled:
            cls = resolve_plugin_class(plugin)
            cls.Settings.model_validate(settings.plugins.table(plugin_table_name(plugin, cls)))
        for variable, value in env.items():  # what the plugins read from the environment (keys_env)
            monkeypatch.setenv(variable, value)
        loaded.append(Replica(name, service, config_file, env, settings, create_app(settings)))
    return loaded


def plugin(replica: Replica, name: str):
    return next(p for p in replica.app[STATE].plugins if p.name == name)


def test_two_replicas_load_their_settings(replicas, replica_apps):
    assert len(replicas) >= 2
    for replica in replica_apps:
        assert replica.config_file == REPO / "deploy" / "gateway.toml"
        assert replica.env[ENV_PREFIX + "MODEL__SOURCE"] == "hf:sdobson/nanochat"
        parse_hf_source(replica.settings.model.source)
        assert replica.settings.logging.format in ("json", "keyvalue")
        assert {"request_log", "metrics", "api_keys", "rate_limit"} <= set(replica.settings.plugins.enabled)
        others = {k for k in replica.env if not k.startswith(ENV_PREFIX)} - set(replica_apps[0].env) - {
            "HF_TOKEN", plugin(replica, "api_keys").settings.keys_env}
        assert not others, f"{replica.name}: environment variables nothing reads: {others}"
    first = replica_apps[0]
    for replica in replica_apps[1:]:
        assert replica.settings == first.settings and replica.env == first.env, "replicas must be identical"


def test_replicas_are_private_keep_the_cache_and_drain(compose, replica_apps, runtime):
    volume_root = runtime.last("VOLUME").exec_form()[0]
    for replica in replica_apps:
        service = replica.service
        assert "ports" not in service, f"{replica.name}: only nginx is published"
        assert [str(p) for p in service["expose"]] == [str(replica.settings.server.port)]
        source = mounts(service)[volume_root]
        assert source in compose["volumes"], f"{replica.name}: the model cache must be a named volume"
        assert service.get("init") is True, "a real init passes SIGTERM on"
        assert seconds(service["stop_grace_period"]) > replica.settings.server.shutdown_grace_s
        assert "healthcheck" not in service or "/ready" in json.dumps(service["healthcheck"])


def test_replicas_share_one_redis(compose, replica_apps):
    urls = set()
    for replica in replica_apps:
        limits = replica.settings.plugins.table("rate_limit")
        assert limits["backend"] == "redis"
        assert plugin(replica, "rate_limit").settings.requests_per_minute > 0
        urls.add(limits["redis_url"])
        assert replica.service["depends_on"]["redis"]["condition"] == "service_healthy"
    (url,) = urls
    host, port = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", url).groups()
    redis = compose["services"][host]
    assert redis["image"].startswith("redis:") and port == "6379" and "healthcheck" in redis


def test_trusted_proxies_cover_the_proxy_network(compose, replica_apps):
    subnets = [ipaddress.ip_network(c["subnet"]) for network in compose["networks"].values()
               for c in (network or {}).get("ipam", {}).get("config", [])]
    assert subnets, "pin the subnet, or X-Forwarded-For cannot be trusted"
    for replica in replica_apps:
        trusted = [ipaddress.ip_network(p) for p in plugin(replica, "rate_limit").settings.trusted_proxies]
        nginx_networks = compose["services"]["nginx"]["networks"]
        assert set(nginx_networks) == set(replica.service["networks"])
        for subnet in subnets:
            assert any(subnet.subnet_of(t) for t in trusted), f"{subnet} is not trusted"


# --- nginx -----------------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.find(name)
        assert len(found) == 1, f"expected one {name} in {self.name} {self.args}, found {len(found)}"
        return found[0]


def parse_nginx(text: str) -> Directive:
    tokens = re.findall(r"""#[^\n]*|"(?:\\.|[^"])*"|'(?:\\.|[^'])*'|[{};]|[^\s{};'"#]+""", text)
    root = Directive("main", [], [])
    stack, words = [root], []
    for token in tokens:
        if token.startswith("#"):
            continue
        if token == ";":
            stack[-1].block.append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            block = Directive(words[0], words[1:], [])
            stack[-1].block.append(block)
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"missing ';' after {words}"
            stack.pop()
        else:
            words.append(token[1:-1] if token[0] in "'\"" else token)
    assert len(stack) == 1 and not words, "unbalanced braces"
    return root


def location_for(server: Directive, path: str) -> Directive:
    """The location nginx picks for ``path``: an exact match, else the longest prefix (no regexes here)."""
    best: Directive | None = None
    for location in server.find("location"):
        assert location.args[0] in ("=", "^~") or len(location.args) == 1, "regex locations are not handled"
        if location.args[0] == "=":
            if location.args[1] == path:
                return location
            continue
        prefix = location.args[-1]
        if path.startswith(prefix) and (best is None or len(prefix) > len(best.args[-1])):
            best = location
    assert best is not None, f"no location serves {path}"
    return best


def effective(name: str, *scopes: Directive) -> list[str] | None:
    """A directive's arguments as inherited: the innermost scope that sets it."""
    for scope in scopes:
        found = scope.find(name)
        if found:
            return found[-1].args
    return None


def nginx_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    return int(text[:-1]) * units[text[-1].lower()] if text[-1].lower() in units else int(text)


def test_nginx_proxies_the_api_unbuffered_to_the_replicas(compose, replica_apps):
    nginx = compose["services"]["nginx"]
    source = mounts(nginx)["/etc/nginx/nginx.conf"]
    config = parse_nginx((COMPOSE.parent / source).read_text(encoding="utf-8"))
    assert nginx["ports"], "nginx is the published entry point"
    http = config.one("http")
    (upstream,) = http.find("upstream")
    servers = upstream.find("server")
    targets = {s.args[0] for s in servers}
    assert targets == {f"{r.name}:{r.settings.server.port}" for r in replica_apps}
    if any("resolve" in s.args for s in servers):  # open-source nginx has it since 1.27.3
        assert http.find("resolver") and upstream.find("zone")
        version = tuple(int(x) for x in re.match(r"nginx:(\d+)\.(\d+)", nginx["image"]).groups())
        assert version >= (1, 28), nginx["image"]

    settings = replica_apps[0].settings
    (server,) = http.find("server")
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/ready"):
        location = location_for(server, path)
        scopes = (location, server, http)
        assert location.one("proxy_pass").args == [f"http://{upstream.args[0]}"], path
        assert effective("proxy_buffering", *scopes) == ["off"], f"{path}: SSE must not be buffered"
        assert effective("proxy_cache", *scopes) in (None, ["off"])
        assert effective("proxy_http_version", *scopes) == ["1.1"]
        assert seconds(effective("proxy_read_timeout", *scopes)[0]) >= settings.server.request_timeout_s
        assert nginx_size(effective("client_max_body_size", *scopes)[0]) >= settings.server.client_max_size
        headers = {d.args[0].lower(): d.args[1] for d in location.find("proxy_set_header")}
        assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
        assert headers["connection"] == "", "upstream keep-alive needs an empty Connection header"
        assert "http_503" in effective("proxy_next_upstream", *scopes)  # draining replicas answer 503
    # The proxy is no more patient with clients than a replica, and lets idle upstream connections
    # go before a replica closes them.
    assert seconds(effective("client_header_timeout", server, http)[0]) <= settings.server.head_timeout_s
    assert seconds(effective("client_body_timeout", server, http)[0]) <= settings.server.body_timeout_s
    assert seconds(effective("keepalive_timeout", server, http)[0]) <= settings.server.keepalive_timeout_s
    assert seconds(upstream.one("keepalive_timeout").args[0]) < settings.server.keepalive_timeout_s
    metrics = location_for(server, settings.plugins.table("metrics").get("path", "/metrics"))
    assert not metrics.find("proxy_pass") and metrics.one("return").args[0] in ("403", "404")


# --- Prometheus ------------------------------------------------------------------------------------


def test_prometheus_scrapes_each_replica(compose, replica_apps):
    prometheus = compose["services"]["prometheus"]
    flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    source = mounts(prometheus)[flag.split("=", 1)[1]]
    config = yaml.safe_load((COMPOSE.parent / source).read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{r.name}:{r.settings.server.port}" for r in replica_apps}
    for replica in replica_apps:
        metrics = plugin(replica, "metrics")
        assert job.get("metrics_path", "/metrics") == metrics.settings.path
        keys = plugin(replica, "api_keys")
        if keys.metrics_digest is not None:
            assert "authorization" in job, "the metrics token must be sent"
        else:
            assert keys.is_public(metrics.settings.path), "Prometheus sends no API key"
        assert set(prometheus["networks"]) & set(replica.service["networks"])


# --- docs/deploy.md --------------------------------------------------------------------------------


def test_deploy_docs_sizing_numbers_are_the_models(compose):
    """The KV table of docs/deploy.md is what the model code computes for nanochat's shapes."""
    import torch

    from nanochat_gateway.model.gpt import ModelConfig

    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for name, layers, width, heads in (("d20", 20, 1280, 10), ("d26", 26, 1664, 13), ("d32", 32, 2048, 16)):
        config = ModelConfig(sequence_len=2048, vocab_size=65536, n_layer=layers, n_head=heads, n_kv_head=heads,
                             n_embd=width)
        bf16, fp32 = config.kv_bytes_per_token(torch.bfloat16), config.kv_bytes_per_token(torch.float32)
        row = f"| {name} | {layers} | {width} | {heads} | {bf16:,} ({bf16 // 1024} KiB) | {fp32:,} | " \
              f"{bf16 * 2048 // 2**20} MiB | {fp32 * 2048 // 2**20} MiB |"
        assert row in text, row
        gib = [(Decimal(n * bf16 * 2048) / 2**30).quantize(Decimal("0.1"), ROUND_HALF_UP) for n in (8, 16, 32, 64)]
        sizes = " | ".join(f"{size} GiB" for size in gib)
        assert f"| {name} | {sizes} |" in text
    assert "KV cache per token     204,800 bytes" in text  # inspect's line for d20 in float32
    assert "One run of `nanochat-gateway bench --suite`" in text and "TBD" not in text  # measured, not placeholders
    for service in compose["services"]:
        assert f"`{service}`" in text, f"docs/deploy.md does not describe the {service} service"
