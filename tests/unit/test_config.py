"""Config errors name the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from surge.config import ConfigError, RolloutConfig, load_config
from surge.routing.rollout import RolloutPolicy
from surge.serving.cores import plan_cores


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "surge.yaml"
    path.write_text(text)
    return path


def test_the_demo_config_is_valid():
    config = load_config(None)
    assert set(config.endpoints) == {"digits", "embed", "digits_small", "digits_big"}
    assert config.routes["digits_smart"].targets() == ["digits_small", "digits_big"]


def test_routes_must_target_what_exists_and_never_themselves(tmp_path):
    endpoints = "endpoints: {a: {}}\n"
    for routes, words in [
        ("routes: {r: {cascade: {tiers: [{target: ghost, threshold: 0.5}]}}}", "ghost"),
        ("routes: {a: {ladder: {rungs: [a]}}}", "names of endpoints"),
        ("routes: {r: {ladder: {rungs: [s]}}, s: {ladder: {rungs: [r]}}}", "reaches itself"),
        ("routes: {r: {ladder: {rungs: [a]}, fallback: {targets: [a, a]}}}", "exactly one"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_config(write(tmp_path, endpoints + routes))


def test_unknown_keys_and_wrong_types_name_their_path(tmp_path):
    path = write(
        tmp_path,
        """
endpoints:
  embed:
    replicas: two
    batching: {max_batch_size: 8, max_delay: 3}
server: {port: 99999}
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "endpoints.embed.replicas: Input should be a valid integer" in message
    assert "'two'" in message
    assert "endpoints.embed.batching.max_delay: unknown key" in message
    assert "server.port: Input should be less than or equal to 65535" in message


def test_preferred_sizes_must_fit_the_batch(tmp_path):
    path = write(
        tmp_path, "endpoints: {e: {batching: {max_batch_size: 8, preferred_batch_sizes: [16]}}}"
    )
    with pytest.raises(ConfigError, match="preferred_batch_sizes"):
        load_config(path)


@pytest.mark.parametrize(
    ("steps", "words"),
    [("[50, 10]", "strictly increasing"),
     ("[5, 50]", "last step must be 100"),
     ("[0, 100]", "must lie in (0, 100]"),
     ("[]", "at least one step")],
)  # fmt: skip
def test_bad_rollout_steps_are_refused_when_the_config_loads(tmp_path, steps, words):
    # Not when someone deploys a canary: then it was a 500 with the candidate left loaded.
    path = write(tmp_path, f"endpoints: {{e: {{rollout: {{steps_percent: {steps}}}}}}}")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "endpoints.e.rollout.steps_percent:" in message
    assert words in message


def test_the_rollout_policy_is_built_from_the_config_with_the_same_defaults():
    defaults = RolloutConfig().policy()
    assert defaults == RolloutPolicy()
    assert defaults.min_step_s == RolloutConfig().min_step_s
    tuned = RolloutConfig(steps_percent=[10, 100], min_step_s=2).policy()
    assert (tuned.steps_percent, tuned.min_step_s) == ((10, 100), 2)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "endpoints: [unclosed"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


def test_relative_repository_is_relative_to_the_config_file(tmp_path):
    config = load_config(write(tmp_path, "model_repository: models\n"))
    assert config.model_repository == tmp_path / "models"


def test_cores_are_divided_without_oversubscription(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
server: {workers: 2}
endpoints:
  a: {replicas: 2}
  b: {}
""",
        )
    )
    plan, lines = plan_cores(config, cores=8)
    assert (plan["a"].replicas, plan["a"].threads_per_replica) == (2, 2)
    assert (plan["b"].replicas, plan["b"].threads_per_replica) == (1, 4)
    assert "4 core(s) per worker" in lines[0]
    assert not any("oversubscribed" in line for line in lines)


def test_urls_with_passwords_can_come_from_the_environment(tmp_path, monkeypatch):
    path = write(tmp_path, "registry_url: sqlite:///r.db\nredis_url: redis://127.0.0.1:6379/0\n")
    monkeypatch.setenv("SURGE_REGISTRY_URL", "postgresql://surge:s3cret@db:5432/surge")
    monkeypatch.setenv("SURGE_REDIS_URL", "redis://:s3cret@cache:6379/0")
    config = load_config(path)
    assert config.registry_url == "postgresql://surge:s3cret@db:5432/surge"
    assert config.redis_url == "redis://:s3cret@cache:6379/0"


def test_tenants_with_budgets_need_receipts_and_plain_names(tmp_path):
    with pytest.raises(ConfigError, match="receipts"):
        load_config(write(tmp_path, "tenants: {acme: {budget: {per_hour: 1}}}\n"
                                    "observability: {receipts: {enabled: false}}\n"))  # fmt: skip
    with pytest.raises(ConfigError, match="tenant names"):
        load_config(write(tmp_path, "tenants: {'a/b': {}}\n"))


def test_autoscale_is_for_local_replicas(tmp_path):
    endpoint = ("endpoints: {digits: {autoscale: {max_replicas: 2}, "
                "placement: {ray: {replicas: 2}}}}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="local replicas"):
        load_config(write(tmp_path, endpoint))
