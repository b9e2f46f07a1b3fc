"""tli.probe: answers, log-probabilities and ranks on tiny models whose answers are known, the key/value cache
against plain forward passes, and the tables' tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tli import data, probe, stats
from tli.config import PROBE_SHOTS, ProbeConfig
from tli.evaluate import Lexicon

from conftest import tiny_model


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    return AutoTokenizer.from_pretrained(embedded_dir)


def one_word_model(tokenizer, word: str = "ball") -> torch.nn.Module:
    r"""A 2-block Llama that answers every prompt with " <word>\n": the blocks add nothing (output projections 0), so
    the logits depend on the current token only; after " <word>" the newline wins, after anything else " <word>".
    """
    (answer,) = tokenizer(f" {word}", add_special_tokens=False)["input_ids"]
    (newline,) = tokenizer("\n", add_special_tokens=False)["input_ids"]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0  # every token but the answer: direction 0
        model.model.embed_tokens.weight[answer] = torch.nn.functional.one_hot(torch.tensor(1), 32).float()
        model.lm_head.weight.zero_()
        model.lm_head.weight[answer, 0] = model.lm_head.weight[newline, 1] = 10.0
    return model


def _pairs(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["swahili", "english"]).assign(category="x", pos="noun", split="trained")


def _probe(model, tokenizer, pairs, config: ProbeConfig):
    lexicon = Lexicon.from_pairs(pairs)
    probed, excluded = probe.probed_rows({"trained": pairs}, config)
    wanted = probe.sources(probed, lexicon, config)
    answers = probe.answer(model, tokenizer, wanted, config, batch_size=3)
    return probe.probe_table(probed, wanted, answers, answers), excluded


def test_normalise_and_accepted_forms():
    assert probe.normalise("  Ball.\nSwahili: x") == "ball"
    assert probe.normalise("-refu") == "refu" and probe.normalise("guinea  fowl!") == "guinea fowl"
    assert probe.accepted("to beg/pray") == {"to beg/pray", "beg/pray", "to beg", "beg", "pray"}
    assert len(probe.SHOTS) == PROBE_SHOTS


def test_a_model_that_always_answers_ball_is_right_exactly_where_a_gloss_is_ball(tokenizer):
    pairs = _pairs([("mpira wa miguu", "ball"), ("tufe", "Ball"), ("maji", "water"), ("moto", "fire"), ("ball", "X")])
    table, _ = _probe(one_word_model(tokenizer), tokenizer, pairs, ProbeConfig(probe_distractors=3, probe_shots=0))
    table = table.set_index(["direction", "swahili"])
    assert set(table["output_pre"]) == {"ball"}
    expected_sw_en = {"mpira wa miguu": 1.0, "tufe": 1.0, "maji": 0.0, "moto": 0.0, "ball": 0.0}
    assert table.loc["sw_en", "correct_pre"].to_dict() == expected_sw_en
    assert table.loc["en_sw", "correct_pre"].to_dict() == {k: float(k == "ball") for k in expected_sw_en}
    sw_en = table.loc["sw_en"]
    assert sw_en.loc["mpira wa miguu", "logprob_pre"] > -0.01  # p(" ball\n") ~ 1
    assert sw_en.loc["mpira wa miguu", "rank_pre"] == 1 and sw_en.loc["maji", "rank_pre"] > 1
    assert (sw_en["logprob_pre"] <= 0).all() and sw_en.loc["tufe", "logprob_pre"] < -10  # " Ball" is never said


def test_the_shots_are_never_scored_and_a_fixed_sample_is_probed():
    pairs = _pairs([("mshumaa", "candle"), ("wingu", "sky"), ("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")])
    probed, excluded = probe.probed_rows({"trained": pairs}, ProbeConfig(probe_shots=2, probe_pairs=3))
    assert excluded == {"trained": 2} and len(probed["trained"]) == 3
    again, _ = probe.probed_rows({"trained": pairs.iloc[::-1]}, ProbeConfig(probe_shots=2, probe_pairs=3))
    assert set(again["trained"].index) == set(probed["trained"].index)  # the same pairs, whatever the order
    lexicon = Lexicon.from_pairs(pairs)
    wanted = probe.sources(probed, lexicon, ProbeConfig(probe_distractors=2))
    for source in wanted:
        assert len(source.distractors) == 2 and not set(source.distractors) & source.glosses


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_cached_scores_and_greedy_answers_equal_plain_forward_passes(family, tokenizer):
    model = tiny_model(family, len(tokenizer), tokenizer.pad_token_id, n_blocks=2)
    model.config.max_position_embeddings = 256
    pairs = data.load_pairs().iloc[::97].head(6).reset_index(drop=True)
    config = ProbeConfig(probe_distractors=2, probe_shots=2, probe_max_new_tokens=3)
    lexicon = Lexicon.from_pairs(pairs)
    probed, _ = probe.probed_rows({"trained": pairs}, config)
    wanted = probe.sources(probed, lexicon, config)
    answers = probe.answer(model, tokenizer, wanted, config, batch_size=2)
    for source in wanted[:3] + wanted[-2:]:
        found = answers[source.direction, source.word]
        prompt = tokenizer(probe.prefix_text(source.direction, 2))["input_ids"]
        prompt += tokenizer(probe.query_text(source.direction, source.word), add_special_tokens=False)["input_ids"]
        for gold in source.golds:
            ids = tokenizer(probe.answer_text(gold), add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                log_p = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].double(), dim=-1)
            expected = sum(float(log_p[len(prompt) - 1 + i, t]) for i, t in enumerate(ids))
            assert found.logprob[gold] == pytest.approx(expected, abs=1e-3)
        greedy = list(prompt)
        with torch.no_grad():
            for _ in range(3):
                greedy.append(int(model(torch.tensor([greedy])).logits[0, -1].argmax()))
        text = tokenizer.decode(greedy[len(prompt) :], skip_special_tokens=True).split("\n")[0].strip()
        assert text.startswith(found.output) and found.output == text[: len(found.output)]


def test_the_probe_restores_modes_and_disables_a_peft_adapter(tiny_llama):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny_llama
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.train()
    pairs = data.load_pairs().head(3)
    lexicon, config = Lexicon.from_pairs(pairs), ProbeConfig(probe_distractors=2, probe_shots=1)
    wanted = probe.sources(probe.probed_rows({"trained": pairs}, config)[0], lexicon, config)
    base = probe.answer(peft_model, tokenizer, wanted, config, adapter=False)
    assert all(module.training for module in peft_model.modules() if hasattr(module, "training"))
    tuned = probe.answer(peft_model, tokenizer, wanted, config, adapter=True)
    with peft_model.disable_adapter():
        plain = probe.answer(peft_model, tokenizer, wanted, config)
    key = (wanted[0].direction, wanted[0].word)
    gold = wanted[0].golds[0]
    assert base[key].logprob[gold] == pytest.approx(plain[key].logprob[gold])
    assert tuned[key].logprob[gold] != pytest.approx(base[key].logprob[gold])
    peft_model.unload()


def test_probe_summary_tests_paired_correctness_with_mcnemar():
    table = pd.DataFrame(
        {
            "set": "control",
            "direction": "sw_en",
            "pair_id": range(6),
            "correct_pre": [0, 0, 0, 1, 1, 0],
            "correct_post": [1, 1, 1, 1, 0, 0],
            "rr_pre": 0.5,
            "rr_post": 1.0,
            "logprob_pre": [-3.0, -2.0, -4.0, -1.0, -2.5, -5.0],
            "logprob_post": [-2.0, -1.0, -3.5, -1.0, -2.0, -4.0],
            "rr_chance": 0.3,
        }
    )
    row = probe.probe_summary(table, {"control": 1}).iloc[0]
    assert (row["n"], row["n_excluded"], row["accuracy_gained"], row["accuracy_lost"]) == (6, 1, 3, 1)
    assert row["accuracy_pre"] == pytest.approx(2 / 6) and row["accuracy_diff"] == pytest.approx(2 / 6)
    assert row["accuracy_mcnemar_p"] == pytest.approx(stats.mcnemar_exact([0, 0, 0, 1], [1, 1, 1, 0])["mcnemar_p"])
    assert row["mrr_diff"] == 0.5 and row["mrr_chance"] == 0.3
    assert row["logprob_diff"] == pytest.approx(np.mean([1, 1, 0.5, 0, 0.5, 1]))


def test_a_pair_whose_gloss_is_the_word_itself_is_right_both_ways(tokenizer):
    pairs = _pairs([("ball", "ball"), ("maji", "water"), ("moto", "fire")])
    table, _ = _probe(one_word_model(tokenizer), tokenizer, pairs, ProbeConfig(probe_distractors=2, probe_shots=1))
    correct = table.set_index(["direction", "swahili"])["correct_pre"]
    assert correct[("sw_en", "ball")] == correct[("en_sw", "ball")] == 1.0
    assert correct.drop([("sw_en", "ball"), ("en_sw", "ball")]).eq(0).all()
    summary = probe.probe_summary(table).set_index("direction")
    assert (summary["accuracy_pre"] == 1 / 3).all() and (summary["accuracy_mcnemar_p"] == 1.0).all()
