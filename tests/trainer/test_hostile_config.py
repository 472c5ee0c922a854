"""Hostile configs: every bad key, type, value, file and --set override gives a ConfigError naming it."""

import pytest
import yaml

from rlsd.config import Config, ConfigError, config_from_dict, load_config

SECTIONS = ["model", "data", "verifier", "rollout", "teacher", "algo", "train"]


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return str(path)


def error(data) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return str(info.value)


def test_defaults_and_a_full_config_load(tmp_path):
    assert config_from_dict({}) == Config()
    (tmp_path / "model").mkdir()
    (tmp_path / "train.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    path = write(tmp_path, f"""
model: {{path: {tmp_path / 'model'}, dtype: auto, gradient_checkpointing: true, lora: {{r: 16}}}}
data: {{train: {tmp_path / 'train.jsonl'}, prompt_template: "{{prompt}}\\n"}}
verifier: {{name: math}}
rollout: {{engine: vllm, n: 8, max_new_tokens: 1024, temperature: 1}}
teacher: {{sync: frozen, sync_every: 20, source: answer}}
algo: {{name: rlsd, loss: {{lam: 0.5, eps_w: 0.2, dual_clip: 3}}, lam_schedule: linear, lam_end: 0.0, lam_decay_steps: 50}}
train: {{steps: 200, prompts_per_step: 32, micro_batch_size: 16, lr: 1e-6, output_dir: runs/rlsd}}
""")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-6 and isinstance(cfg.train.lr, float)  # YAML 1.1 would read "1e-6" as a string
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)
    assert cfg.model.lora.r == 16 and cfg.algo.loss.dual_clip == 3.0 and cfg.data.prompt_template == "{prompt}\n"


@pytest.mark.parametrize("section", SECTIONS)
def test_unknown_key_in_each_section_is_named_with_a_suggestion(section):
    first = {"model": "path", "data": "train", "verifier": "name", "rollout": "engine", "teacher": "source",
             "algo": "name", "train": "steps"}[section]
    message = error({section: {first + "x": 1}})
    assert f"unknown key '{section}.{first}x'" in message and f"did you mean '{section}.{first}'" in message


def test_unknown_keys_at_the_top_and_in_lora():
    assert "unknown key 'trian' (did you mean 'train'?)" in error({"trian": {}})
    assert "'model.lora.rank'" in error({"model": {"lora": {"rank": 4}}})
    message = error({"algo": {"loss": {"lamda": 1, "zzz": 2}}})
    assert "'algo.loss.lamda' (did you mean 'algo.loss.lam'?)" in message and "'algo.loss.zzz'" in message


@pytest.mark.parametrize("key", ["lam", "eps_w", "negative_only", "kl_coef"])
def test_a_loss_option_at_its_old_place_is_named_with_its_new_one(key):
    assert f"unknown key 'algo.{key}' (moved to 'algo.loss.{key}')" in error({"algo": {key: 0.5}})
    with pytest.raises(ConfigError, match=f"--set 'algo.{key}=0.5': unknown key 'algo.{key}' "
                                          f"\\(moved to 'algo.loss.{key}'\\)"):
        load_config(None, [f"algo.{key}=0.5"])


@pytest.mark.parametrize("data,expected", [
    ({"train": {"lr": "fast"}}, "train.lr: expected a number, got str 'fast'"),
    ({"train": {"lr": "1e-5"}}, "train.lr: expected a number, got str '1e-5'"),
    ({"train": {"steps": 1.5}}, "train.steps: expected an integer, got float 1.5"),
    ({"train": {"steps": "10"}}, "train.steps: expected an integer"),
    ({"train": {"steps": True}}, "train.steps: expected an integer, got bool True"),
    ({"train": {"lr": [1e-5]}}, "train.lr: expected a number, got list"),
    ({"train": {"lr": None}}, "train.lr: expected a number, got null"),
    ({"train": {"betas": 0.9}}, "train.betas: expected a list"),
    ({"train": {"progress": "yes please"}}, "train.progress: expected true or false"),
    ({"train": {"progress": 1}}, "train.progress: expected true or false, got int 1"),
    ({"model": {"path": 123}}, "model.path: expected a string, got int 123"),
    ({"model": {"lora": True}}, "model.lora: expected a mapping or null, got bool True"),
    ({"model": None}, "model: expected a mapping, got null"),
    ({"train": [1, 2]}, "train: expected a mapping, got list"),
    ({"verifier": {"options": ["pattern"]}}, "verifier.options: expected a mapping"),
    ({"algo": {"loss": {"dual_clip": "off"}}}, "algo.loss.dual_clip must be a number, got str 'off'"),
    ({"algo": {"loss": None}}, "algo.loss: expected a mapping, got null"),
    ({"data": {"eval": None}}, "data.eval: expected a string, got null"),
])
def test_wrong_types_are_named(data, expected):
    assert expected in error(data)


def test_every_type_error_is_reported_at_once():
    message = error({"train": {"lr": "x", "steps": "y"}, "rollout": {"n": None}})
    assert all(k in message for k in ("train.lr", "train.steps", "rollout.n"))


@pytest.mark.parametrize("key,value", [
    ("train.lr", 0), ("train.lr", -1e-5), ("train.lr", float("nan")), ("train.lr", float("inf")),
    ("train.steps", -1), ("train.steps", 0), ("train.prompts_per_step", 0), ("train.micro_batch_size", 0),
    ("train.micro_batch_tokens", -1),
    ("train.weight_decay", -0.1), ("train.betas", [0.9]), ("train.betas", [0.9, 1.0]), ("train.betas", ["a", 0.9]),
    ("train.grad_clip", -1), ("train.seed", -1), ("train.seed", 2 ** 32), ("train.threads", -2),
    ("train.eval_every", -1), ("train.eval_size", -1), ("train.checkpoint_every", -1), ("train.output_dir", " "),
    ("algo.loss.lam", -0.1), ("algo.loss.lam", 1.5), ("algo.lam_end", 2.0), ("algo.lam_decay_steps", 0),
    ("algo.loss.eps_w", -0.1), ("algo.loss.eps_w", 1.0), ("algo.loss.eps_low", 1.0), ("algo.loss.eps_high", -0.1),
    ("algo.loss.dual_clip", 1.0), ("algo.loss.kl_coef", -1), ("algo.loss.entropy_coef", float("nan")),
    ("algo.opsd_beta", 1.5),
    ("algo.opsd_coef", -1), ("rollout.temperature", 0), ("rollout.temperature", -1.0), ("rollout.n", 0),
    ("rollout.max_new_tokens", 0), ("teacher.sync_every", 0), ("data.curriculum_threshold", 1.5),
    ("data.curriculum_window", 0), ("model.lora.r", 0), ("model.lora.dropout", 1.0),
    ("model.lora.target_modules", []),
])
def test_values_out_of_range_are_named(key, value):
    *path, last = key.split(".")
    data = node = {}
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    assert f"{key} must be" in error(data)


@pytest.mark.parametrize("key,value,suggestion", [
    ("algo.name", "rsld", "rlsd"), ("algo.name", "ppo", None), ("rollout.engine", "vlm", "vllm"),
    ("verifier.name", "exct", "exact"), ("algo.loss_agg", "token_mean", "token-mean"),
    ("teacher.sync", "froze", "frozen"), ("algo.loss.kl_type", "k4", None), ("algo.advantage", "dr-grpo", "drgrpo"),
    ("algo.lam_schedule", "cosine", None), ("algo.opsd_form", "kl", None), ("teacher.source", "trace", None),
    ("model.dtype", "fp16", None), ("train.impl", "cuda", None), ("train.device", "gpu", None),
])
def test_unknown_names(key, value, suggestion):
    *path, name = key.split(".")
    data = node = {}
    for part in path:
        node = node.setdefault(part, {})
    node[name] = value
    message = error(data)
    assert key in message and repr(value) in message
    if suggestion:
        assert f"did you mean '{suggestion}'" in message


def test_templates_and_verifier_options_are_checked():
    assert "data.prompt_template must use the fields {prompt}" in error({"data": {"prompt_template": "Q:"}})
    assert "not a valid format string" in error({"data": {"prompt_template": "{prompt} {"}})
    message = error({"teacher": {"template": "{prompt} {answer}"}})
    assert "teacher.template" in message and "unknown ['answer']" in message and "missing ['reference']" in message
    message = error({"verifier": {"name": "exact", "options": {"patern": "x"}}})
    assert "verifier.options" in message and "'patern'" in message and "['pattern']" in message
    assert config_from_dict({"data": {"prompt_template": "{{literal}} {prompt}"}}).data.prompt_template


def test_jsd_needs_a_live_teacher():
    assert "teacher.sync 'live'" in error({"algo": {"name": "opsd", "opsd_form": "jsd"}, "teacher": {"sync": "frozen"}})


@pytest.mark.parametrize("text,expected", [
    ("train: {lr: 1e-5\n", "not valid YAML"),
    ("train:\n  lr: 1\n lr: 2\n", "not valid YAML"),
    ("train:\n  lr: 1\n  lr: 2\n", "duplicate key 'lr'"),
    ("", "the config file is empty"),
    ("# only a comment\n", "the config file is empty"),
    ("- train\n- algo\n", "expected a mapping of sections"),
    ("just words", "expected a mapping of sections"),
    (b"train: {output_dir: \xff\xfe}\n", "not a readable UTF-8 text file"),
    ("train: !!python/object/apply:os.system ['echo hostile']\n", "not valid YAML"),
])
def test_bad_files(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert path in str(info.value) and expected in str(info.value)


def test_yaml_merge_keys_still_work(tmp_path):
    cfg = load_config(write(tmp_path, "train: {<<: {lr: 2.0e-5, steps: 9}, steps: 3}\n"))
    assert cfg.train.lr == 2e-5 and cfg.train.steps == 3


def test_missing_config_file_and_missing_files_it_names(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not a readable"):
        load_config(str(tmp_path))
    path = write(tmp_path, yaml.safe_dump({"data": {"train": str(tmp_path / "gone.jsonl")},
                                           "model": {"path": str(tmp_path / "no-model")}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "data.train: no such file" in str(info.value) and "gone.jsonl" in str(info.value)
    assert "model.path: no such directory" in str(info.value)
    path = write(tmp_path, yaml.safe_dump({"verifier": {"name": "code", "options": {"sandbox": "chroot"}}}))
    with pytest.raises(ConfigError, match="verifier 'code' cannot run here: sandbox must be one of"):
        load_config(path)


def test_errors_from_a_file_name_the_file(tmp_path):
    path = write(tmp_path, "train: {lr: -1}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.lr must be a finite number > 0, got -1"):
        load_config(path)


def test_set_overrides(tmp_path):
    path = write(tmp_path, "model:\n  lora: null\ntrain: {lr: 1.0e-5}\n")
    cfg = load_config(path, ["train.steps=7", "model.lora.r=4", "train.output_dir=123", "train.betas=[0.8, 0.9]",
                             "verifier.options.pattern=(\\d+)", "verifier.name=exact", "algo.loss.dual_clip=null",
                             "algo.loss.kl_type=k2"])
    assert cfg.train.steps == 7 and cfg.model.lora.r == 4 and cfg.train.output_dir == "123"
    assert cfg.algo.loss.dual_clip is None and cfg.algo.loss.kl_type == "k2"
    assert cfg.train.betas == [0.8, 0.9] and cfg.verifier.options == {"pattern": "(\\d+)"} and cfg.train.lr == 1e-5
    assert load_config(path, ["model.lora=null"]).model.lora is None
    with pytest.raises(ConfigError, match=r"--set 'train.lr=1': train is list \[1\], not a mapping"):
        load_config(write(tmp_path, "train: [1]\n", "list.yaml"), ["train.lr=1"])
    for item, expected in [
        ("train.lrr=1", "--set 'train.lrr=1': unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ("tran.lr=1", "unknown key 'tran' (did you mean 'train'?)"),
        ("train.lr.x=1", "train.lr is a value, not a section"),
        ("train.lr", "expected KEY=VALUE"),
        ("=1", "expected KEY=VALUE"),
        ("train.lr=fast", "train.lr: expected a number, got str 'fast'"),
        ("train.lr=0", "train.lr must be a finite number > 0"),
        ("train.steps=", "train.steps: expected an integer, got str ''"),
        ("algo.name=ppo", "algo.name must be one of"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(path, [item])
        assert expected in str(info.value), (item, str(info.value))
    with pytest.raises(ConfigError, match="--set"):
        load_config(path, ["train.lr=fast"])


def test_validation_runs_before_any_model_is_built(tmp_path, monkeypatch, capsys):
    import rlsd.loop
    from rlsd.cli import main

    def build(*args, **kwargs):
        raise AssertionError("a model was built from an invalid config")

    monkeypatch.setattr(rlsd.loop, "load_model", build)
    monkeypatch.setattr(rlsd.loop, "prepare_model", build)
    assert main(["train", write(tmp_path, "train: {lr: 0}\n")]) == 2  # one line on stderr, no traceback
    err = capsys.readouterr().err
    assert err.startswith("rlsd: error: ") and "train.lr" in err and "Traceback" not in err
    cfg = config_from_dict({})
    cfg.train.micro_batch_size = 0  # a Config changed after loading is checked again by the Trainer
    with pytest.raises(ConfigError, match="train.micro_batch_size"):
        rlsd.loop.Trainer(cfg)
