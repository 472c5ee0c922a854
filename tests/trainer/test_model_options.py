import torch

from trainer_helpers import examples, make_config, tiny_setup
from rlsd.demo.experiment import summarize
from rlsd.loop import Trainer


def test_lora_and_gradient_checkpointing_train_only_adapters(tmp_path):
    model, tok = tiny_setup()
    cfg = make_config(tmp_path, model={"gradient_checkpointing": True, "lora": {"r": 4, "alpha": 8}},
                      algo={"name": "rlsd", "dynamic_sampling": False})
    trainer = Trainer(cfg, model, tok, examples(answer="7"))
    base = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()
    trainer.train_step()
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, base[k])}
    assert changed and all("lora_" in k for k in changed)


def test_demo_summary_pairs_methods_by_seed():
    curves = {"grpo": {0: {0: 0.5, 10: 0.6, 20: 0.6}, 1: {0: 0.5, 10: 0.55, 20: 0.6}},
              "rlsd-trace": {0: {0: 0.5, 10: 0.7, 20: 0.7}, 1: {0: 0.5, 10: 0.65, 20: 0.7}}}
    table, summary = summarize(curves, warm=0.5, tail=2)
    assert "rlsd-trace" in table and "grpo" in table
    assert abs(summary["rlsd-trace"]["gain_vs_warm"] - 18.75) < 1e-9
    assert abs(summary["rlsd-trace"]["diff_vs_grpo"] - 10.0) < 1e-9


def test_warm_start_is_cached(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlsd.demo.task import make_split
    from rlsd.demo.warmup import WarmupConfig, warm_start
    heldout = make_split(8, seed=1)
    cfg = WarmupConfig(batch_size=8, steps=2, eval_every=2, max_new_tokens=8)
    path, info = warm_start(str(tmp_path), heldout, cfg, log=lambda *_: None)
    assert info["step"] == 2 and "plain" in info["accuracy"]
    again, info2 = warm_start(str(tmp_path), heldout, cfg, log=lambda *_: None)
    assert again == path and info2 == info
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.decode(tok("12+34=46;#46")["input_ids"]) == "12+34=46;#46"
    assert model.config.model_type == "qwen3"
