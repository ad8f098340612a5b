"""The production deployment files: docker-compose.yml, the Dockerfile, .dockerignore, .env.example
and config/prometheus.yml. No Docker engine is needed: `docker-compose config` (Debian's
docker-compose package, which `make setup` installs when it can; Docker Compose v2 serves as well)
validates the compose file against the Compose Specification, and the rest is read as YAML and text."""
from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROFILES = ("gpu", "cpu", "tools", "flower", "prometheus", "sentinel")
PASSWORD = "0123456789abcdef-test-password"
SOURCES = ("lstmq", "shared", "worker", "producer", "config")


# ---------------------------------------------------------------------------------------------
# reading the files


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def env_file_values() -> dict[str, str]:
    """.env.example with the one value a user must fill in."""
    return {**env_example(), "REDIS_PASSWORD": PASSWORD}


VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}; $$ is $."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        present = env.get(name)
        unset = present is None or (operator is not None and operator.startswith(":") and present == "")
        if operator and operator.endswith("?") and unset:
            raise ValueError(f"{name}: {argument}")
        if operator and operator.endswith("-") and unset:
            return argument
        return present or ""

    return VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(raw) -> dict:
    return interpolate(raw, env_file_values())["services"]


def gpu_services(services) -> dict:
    return {name: service for name, service in services.items() if service.get("deploy", {}).get("resources", {})
            .get("reservations", {}).get("devices")}


def worker_services(services) -> dict:
    return {name: service for name, service in services.items()
            if service.get("image", "").startswith("lstmq:") and "entrypoint" not in service}


def seconds(duration) -> float:
    """A compose duration: 90s, 1m30s, 2m, 1h, 500ms (a bare number is seconds)."""
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(number + unit for number, unit in parts) == duration, duration
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(number) * scale[unit] for number, unit in parts)


def default_setting(key: str):
    return yaml.safe_load((ROOT / "config" / "default.yaml").read_text())[key]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\[ \t]*\n", "", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# the compose file, validated by the compose tool


def compose_tool() -> list[str] | None:
    """docker-compose 1.28+ (profiles and device reservations came in 1.28), else Docker Compose v2."""
    if shutil.which("docker-compose"):
        result = subprocess.run(["docker-compose", "version", "--short"], check=False, capture_output=True, text=True,
                                timeout=30)
        version = tuple(int(part) for part in re.findall(r"\d+", result.stdout)[:2])
        if result.returncode == 0 and version >= (1, 28):
            return ["docker-compose"]
    if shutil.which("docker"):
        result = subprocess.run(["docker", "compose", "version"], check=False, capture_output=True, text=True,
                                timeout=30)
        if result.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.fixture(scope="module")
def tool() -> list[str]:
    found = compose_tool()
    if found is None:
        pytest.skip("no compose tool: neither docker-compose 1.28+ (Debian: apt-get install docker-compose; "
                    "`make setup` installs it when run as root) nor Docker Compose v2 is installed")
    return found


def run_config(tool: list[str], env_file: Path) -> subprocess.CompletedProcess:
    # a clean environment: only the env file sets the variables (and every profile is on, so that
    # Compose v2 lists every service too)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(env_file.parent),
           "COMPOSE_PROFILES": ",".join(PROFILES)}
    return subprocess.run([*tool, "--env-file", str(env_file), "-f", str(COMPOSE), "config"], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_compose_config_accepts_the_file(tool, tmp_path, raw):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env_file_values().items()))
    result = run_config(tool, env_file)
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr, result.stderr     # every variable is set or has a default
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == set(raw["services"])
    for name, service in worker_services(config["services"]).items():
        assert service["environment"]["LSTMQ_BROKER_URL"] == f"redis://:{PASSWORD}@redis:6379/0", name
    devices = {name: service["deploy"]["resources"]["reservations"]["devices"]
               for name, service in gpu_services(config["services"]).items()}
    assert len(devices) >= 2 and all(device[0]["driver"] == "nvidia" for device in devices.values())
    assert PASSWORD in config["services"]["redis"]["command"]


def test_the_sentinel_profile_fails_redis_over_and_everything_follows(tool, tmp_path, services):
    """The sentinel profile: a replica of redis and three sentinels (quorum 2) with the password;
    BROKER_SCHEME and BROKER_HOSTS from .env point every worker and the producer at the sentinels."""
    replica, sentinels = services["redis-replica"], [services[f"sentinel-{index}"] for index in (1, 2, 3)]
    assert replica["profiles"] == ["sentinel"] and replica["command"][:4] == ["redis-server", "--replicaof", "redis", "6379"]
    assert "--masterauth" in replica["command"] and "--masterauth" in services["redis"]["command"]
    for sentinel in sentinels:
        script = sentinel["command"][0]
        assert sentinel["profiles"] == ["sentinel"] and "--sentinel" in script
        assert "sentinel monitor ${SENTINEL_MASTER} redis 6379 2" in script and "requirepass ${REDIS_PASSWORD}" in script
    env_file = tmp_path / ".env"
    hosts = "sentinel-1:26379;sentinel://sentinel-2:26379;sentinel://sentinel-3:26379"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in {**env_file_values(), "BROKER_SCHEME": "sentinel",
                                                                     "BROKER_HOSTS": hosts}.items()))
    result = run_config(tool, env_file)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)["services"]
    for name in [*worker_services(config), "producer", "flower"]:
        environment = config[name]["environment"]
        assert environment["LSTMQ_BROKER_URL"] == f"sentinel://:{PASSWORD}@{hosts}/0", name
        assert environment["LSTMQ_SENTINEL_MASTER"] == "lstmq" and environment["LSTMQ_SENTINEL_PASSWORD"] == PASSWORD


def test_compose_config_refuses_to_run_without_a_password(tool, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())    # as committed: REDIS_PASSWORD empty
    result = run_config(tool, env_file)
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr


# ---------------------------------------------------------------------------------------------
# the compose file, read


def test_redis_keeps_everything_on_a_volume_with_a_password_and_no_published_port(raw, services):
    redis = services["redis"]
    assert "ports" not in redis
    command = redis["command"]
    options = dict(zip(command[1::2], command[2::2]))
    assert command[0] == "redis-server"
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert options["--requirepass"] == PASSWORD
    volume, _, target = redis["volumes"][0].partition(":")
    assert target.startswith("/data") and volume in raw["volumes"]   # a named volume: the AOF survives
    check = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in check and "ping" in check and "PONG" in check
    assert redis["environment"]["REDISCLI_AUTH"] == PASSWORD         # the check authenticates
    assert redis["restart"] in ("always", "unless-stopped")


def test_the_password_comes_from_the_env_file_only(raw):
    text = COMPOSE.read_text()
    assert PASSWORD not in text
    assert env_example()["REDIS_PASSWORD"] == ""                     # no usable password is committed
    with pytest.raises(ValueError, match="REDIS_PASSWORD"):
        interpolate(raw, env_example())
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    assert not any(fnmatch.fnmatch(".env.example", pattern)
                   for pattern in (ROOT / ".gitignore").read_text().splitlines() if pattern and pattern[0] not in "#!")


def test_one_worker_service_per_gpu_each_pinned_to_its_own(services):
    gpus = gpu_services(services)
    assert len(gpus) >= 2
    ids = []
    for name, service in gpus.items():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia", name
        assert "gpu" in device["capabilities"], name
        assert "count" not in device, name                           # count and device_ids exclude each other
        assert len(device["device_ids"]) == 1, name
        ids.append(str(device["device_ids"][0]))
        # its one GPU is GPU 0 inside the container
        assert service["command"] == ["--gpus", "0"], name
        assert service["build"]["args"]["TF_EXTRA"] == "gpu", name
        assert {"compute", "utility"} <= set(service["environment"]["NVIDIA_DRIVER_CAPABILITIES"].split(",")), name
    assert len(set(ids)) == len(ids), ids


def test_a_cpu_worker_service(services):
    cpu = [service for service in worker_services(services).values() if service["command"] == ["--cpu"]]
    assert len(cpu) == 1
    assert "deploy" not in cpu[0] and cpu[0]["build"]["args"]["TF_EXTRA"] == "cpu"


def test_workers_wait_for_redis_stop_gracefully_and_restart(services):
    workers = worker_services(services)
    assert len(workers) >= 3
    for name, service in workers.items():
        environment = service["environment"]
        assert environment["LSTMQ_BROKER_URL"] == f"redis://:{PASSWORD}@redis:6379/0", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        # SIGTERM: the chunk finishes within the shutdown timeout, then lstmq-worker gives it back
        timeout = float(environment.get("LSTMQ_SHUTDOWN_TIMEOUT", default_setting("shutdown_timeout")))
        assert seconds(service["stop_grace_period"]) >= timeout + 15, name
        assert service["restart"] in ("always", "unless-stopped", "on-failure"), name
        assert service.get("init") is True, name
        assert int(environment["LSTMQ_METRICS_PORT"]) == 19100, name
        assert "profiles" in service, name                           # COMPOSE_PROFILES picks gpu or cpu


def test_every_dependency_waits_for_health(services):
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency], dependency


def test_only_redis_and_the_chosen_workers_start_with_compose_up(services):
    assert [name for name, service in services.items() if not service.get("profiles")] == ["redis"]
    for service in services.values():
        assert set(service.get("profiles", [])) <= set(PROFILES)
    chosen = env_example()["COMPOSE_PROFILES"].split(",")
    assert chosen and set(chosen) <= set(PROFILES) - {"tools"}      # `up` never runs the producer


def test_the_producer_runs_once(services):
    producer = services["producer"]
    assert producer["profiles"] == ["tools"]
    assert producer["restart"] == "no"
    assert producer["entrypoint"] == ["lstmq"] and producer["command"][0] == "generate"
    assert "/data/seeds.txt" in producer["command"] and "/data/out.jsonl" in producer["command"]
    assert any(volume.split(":")[1] == "/data" for volume in producer["volumes"])
    assert producer["depends_on"]["redis"]["condition"] == "service_healthy"
    assert producer["healthcheck"] == {"disable": True}
    assert producer["environment"]["LSTMQ_BROKER_URL"] == f"redis://:{PASSWORD}@redis:6379/0"


def test_flower_and_prometheus_are_profiles_on_this_host_only(services):
    flower, prometheus = services["flower"], services["prometheus"]
    assert flower["profiles"] == ["flower"] and prometheus["profiles"] == ["prometheus"]
    assert [*flower["entrypoint"], *flower["command"]][:4] == ["celery", "-A", "lstmq.worker.app", "flower"]
    assert "flower" in flower["build"]["args"]["EXTRA_PIP"]
    assert flower["build"]["args"]["TF_EXTRA"] == "none"
    for service in (flower, prometheus):
        assert service["restart"] in ("always", "unless-stopped")
        assert "healthcheck" in service
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert "./config/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]


def test_prometheus_scrapes_every_worker_service(services):
    config = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    discovered = {}
    for job in config["scrape_configs"]:
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                discovered[name] = dns["port"]
    for name, service in worker_services(services).items():
        assert discovered.get(name) == int(service["environment"]["LSTMQ_METRICS_PORT"]), name


# ---------------------------------------------------------------------------------------------
# the Dockerfile and .dockerignore


def test_the_image_runs_as_a_user_that_is_not_root():
    users = [arguments for instruction, arguments in dockerfile_instructions() if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any("useradd" in arguments for instruction, arguments in dockerfile_instructions() if instruction == "RUN")


def test_dependencies_are_installed_before_the_source_is_copied():
    instructions = dockerfile_instructions()
    copies = [(index, arguments.split()[0]) for index, (instruction, arguments) in enumerate(instructions)
              if instruction == "COPY"]
    first_source = min(index for index, source in copies if source in SOURCES)
    dependencies = [index for index, (instruction, arguments) in enumerate(instructions)
                    if instruction == "RUN" and "pip install -r" in arguments and "pyproject.toml" in arguments]
    assert dependencies and dependencies[0] < first_source
    assert [source for index, source in copies if index < dependencies[0]] == ["pyproject.toml"]
    copied = {source for _, source in copies}
    assert set(SOURCES) | {"pyproject.toml", "README.md"} <= copied
    source_install = [index for index, (instruction, arguments) in enumerate(instructions)
                      if instruction == "RUN" and "pip install --no-deps" in arguments]
    assert source_install and source_install[0] > max(index for index, _ in copies)
    entrypoint = [arguments for instruction, arguments in instructions if instruction == "ENTRYPOINT"]
    assert entrypoint == ['["lstmq-worker"]']


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the image's Python (3.11) has tomllib")
@pytest.mark.parametrize("extra", ["cpu", "gpu", "none"])
def test_the_dependency_layer_lists_what_pyproject_declares(extra):
    """Run the Dockerfile's own extraction on pyproject.toml: the core dependencies plus the extra's."""
    import tomllib

    (run,) = [arguments for instruction, arguments in dockerfile_instructions()
              if instruction == "RUN" and "tomllib" in arguments]
    words = shlex.split(run.split(">", 1)[0])
    assert words[:2] == ["python", "-c"]
    code = words[2].replace("/src/pyproject.toml", str(ROOT / "pyproject.toml"))
    result = subprocess.run([sys.executable, "-c", code, extra], check=False, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"].get(extra, [])
    assert result.stdout.split("\n")[:-1] == wanted
    wrong = subprocess.run([sys.executable, "-c", code, "tpu"], check=False, capture_output=True, text=True, timeout=30)
    assert wrong.returncode != 0 and "TF_EXTRA=tpu" in wrong.stderr


def test_the_healthcheck_pings_its_own_celery_nodes():
    (check,) = [arguments for instruction, arguments in dockerfile_instructions() if instruction == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    assert command and "--start-period" in options and "--timeout" in options
    # the node names come from this container's worker processes (`--name lstmq-gpu0@%h`)
    assert "/proc/" in command and "lstmq.worker.run" in command and '"--name"' in command and '"%h"' in command
    assert "lstmq.worker.app" in command and "control.ping(destination=nodes" in command
    code = shlex.split(command.split("|", 1)[1])[2]
    compile(code, "HEALTHCHECK", "exec")                              # the Python in it is valid


def test_the_build_context_leaves_out_secrets_data_and_models():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for excluded in (".venv", ".git", "data", "models", ".env"):
        assert excluded in patterns, excluded
    for needed in (*SOURCES, "pyproject.toml", "README.md"):
        assert not any(fnmatch.fnmatch(needed, pattern) for pattern in patterns if not pattern.startswith("!")), needed
