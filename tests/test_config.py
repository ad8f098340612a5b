import pytest
import yaml

from lstmq.shared.config import SCHEMA, check_value, default_file, env_name, load_settings
from lstmq.shared.errors import ConfigError, InputError


def test_default_file_documents_every_setting():
    text = default_file().read_text()
    data = yaml.safe_load(text)
    assert set(data) == set(SCHEMA)
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            assert "#" in line, f"setting without a comment: {line}"


def test_defaults_are_the_seed_network():
    settings = load_settings(environ={})
    assert (settings.embedding_dim, settings.lstm_units, settings.context_window) == (100, 150, 17)
    assert settings.optimizer == "adam" and settings.epochs == 100
    assert (settings.words, settings.temperature) == (7, 0.0)


def test_precedence_file_then_environment_then_flags(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("chunk_size: 10\nvisibility_timeout: 100\nbroker_url: redis://file:1/0\n")
    environ = {"LSTMQ_VISIBILITY_TIMEOUT": "200", "LSTMQ_BROKER_URL": "redis://env:2/0"}
    settings = load_settings(config, {"broker_url": "redis://flag:3/0"}, environ=environ)
    assert settings.chunk_size == 10
    assert settings.visibility_timeout == 200
    assert settings.broker_url == "redis://flag:3/0"
    assert settings.sources["visibility_timeout"] == "environment variable LSTMQ_VISIBILITY_TIMEOUT"


def test_config_file_from_environment(tmp_path):
    config = tmp_path / "env.yaml"
    config.write_text("words: 12\n")
    assert load_settings(environ={"LSTMQ_CONFIG": str(config)}).words == 12


def test_unknown_key_names_key_and_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("chunk_sise: 10\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown setting 'chunk_sise'"):
        load_settings(config, environ={})


def test_wrong_type_names_key_and_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: setting 'epochs' must be an integer, got str 'many'"):
        load_settings(config, environ={})


def test_out_of_range_and_bad_environment():
    with pytest.raises(ConfigError, match="LSTMQ_TOP_P: setting 'top_p' must be <= 1"):
        load_settings(environ={"LSTMQ_TOP_P": "1.5"})
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings(environ={"LSTMQ_COLOUR": "blue"})
    with pytest.raises(ConfigError, match="'optimizer' must be one of adam, sgd, rmsprop"):
        load_settings(overrides={"optimizer": "lion"}, environ={})


def test_types_are_converted_and_booleans_rejected(tmp_path):
    assert load_settings(overrides={"temperature": 1}, environ={}).temperature == 1.0
    config = tmp_path / "bool.yaml"
    config.write_text("chunk_size: true\n")
    with pytest.raises(ConfigError, match="chunk_size"):
        load_settings(config, environ={})


def test_seed_may_be_null_and_flags_left_out_are_ignored():
    settings = load_settings(overrides={"seed": None, "words": None}, environ={"LSTMQ_SEED": "null"})
    assert settings.seed is None and settings.words == 7


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    config = tmp_path / "list.yaml"
    config.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(config, environ={})


def test_relations_between_settings():
    with pytest.raises(ConfigError, match="exceeds max_words"):
        load_settings(overrides={"words": 50, "max_words": 10}, environ={})


def test_environment_names():
    assert env_name("broker_url") == "LSTMQ_BROKER_URL"
    assert env_name("visibility_timeout") == "LSTMQ_VISIBILITY_TIMEOUT"


@pytest.mark.parametrize("text, shown", [
    (".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"), ("nan", "'nan'"), ("Infinity", "'Infinity'"),
])
def test_non_finite_numbers_in_a_file_are_rejected(tmp_path, text, shown):
    config = tmp_path / "bad.yaml"
    config.write_text(f"temperature: {text}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert str(caught.value) == f"{config}: setting 'temperature' must be a finite number, got {shown}"


@pytest.mark.parametrize("key, raw, shown", [
    ("temperature", "nan", "'nan'"), ("temperature", ".nan", "nan"), ("top_p", "inf", "'inf'"),
    ("poll_interval", "-Infinity", "'-Infinity'"), ("learning_rate", ".inf", "inf"),
])
def test_non_finite_numbers_in_the_environment_are_rejected(key, raw, shown):
    name = env_name(key)
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={name: raw})
    assert str(caught.value) == f"environment variable {name}: setting {key!r} must be a finite number, got {shown}"


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf"),
                                          (10**400, "an integer too large for a float")])
def test_non_finite_overrides_are_rejected(value, shown):
    # what `lstmq generate --temperature nan` passes (click's float type reads "nan" as a float)
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"temperature": value}, environ={})
    assert str(caught.value) == f"option --temperature: setting 'temperature' must be a finite number, got {shown}"


def test_check_value_rejects_non_finite_fields_with_the_given_error():
    assert check_value("temperature", 0.5, "") == 0.5
    with pytest.raises(InputError, match=r"^seeds\.jsonl:2: field 'top_p' must be a finite number, got nan$"):
        check_value("top_p", float("nan"), "seeds.jsonl:2", noun="field", error=InputError)
    with pytest.raises(ConfigError, match="'epochs' must be an integer, got float inf"):
        check_value("epochs", float("inf"), "")
    with pytest.raises(ConfigError, match="'temperature' must be a number, got str 'hot'"):
        check_value("temperature", "hot", "")


def test_stacking_dropout_and_clipping_settings():
    settings = load_settings(environ={})
    assert (settings.lstm_layers, settings.dropout) == (1, 0.0)   # the seed's network by default
    assert settings.clipnorm >= 0
    params = load_settings(overrides={"lstm_layers": 3, "dropout": 0.25, "clipnorm": 2}, environ={}).model_params()
    assert (params.lstm_layers, params.dropout, params.clipnorm) == (3, 0.25, 2.0)
    assert load_settings(environ={"LSTMQ_LSTM_LAYERS": "2", "LSTMQ_CLIPNORM": "0"}).model_params().lstm_layers == 2
    with pytest.raises(ConfigError, match=r"option --lstm-layers: setting 'lstm_layers' must be >= 1, got 0"):
        load_settings(overrides={"lstm_layers": 0}, environ={})
    with pytest.raises(ConfigError, match=r"setting 'dropout' must be <= 0.9, got 1.0"):
        load_settings(overrides={"dropout": 1.0}, environ={})
    with pytest.raises(ConfigError, match=r"LSTMQ_CLIPNORM: setting 'clipnorm' must be >= 0, got -1"):
        load_settings(environ={"LSTMQ_CLIPNORM": "-1"})
    with pytest.raises(ConfigError, match=r"setting 'lstm_layers' must be an integer, got float 1.5"):
        load_settings(overrides={"lstm_layers": 1.5}, environ={})


def test_variables_that_are_not_settings_are_ignored():
    """LSTMQ_* variables read elsewhere (the worker's own, the test corpus, the kernel cache) are not
    taken for unknown settings."""
    from lstmq.shared.config import load_settings

    environ = {"LSTMQ_DEVICE": "cpu", "LSTMQ_GPU_INDEX": "0", "LSTMQ_CPUS": "0-1", "LSTMQ_TEST_CORPUS": "/x",
               "LSTMQ_KERNEL_CACHE": "/tmp/kernels", "LSTMQ_NATIVE_KERNELS": "off"}
    assert load_settings(environ=environ).native_kernels == "off"
