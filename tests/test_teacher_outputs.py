"""The teacher computes what the losses read (issue 12, item 6): attention maps only with the
attention loss, and only the hidden states and attention maps of the layers the layer map names;
the values are those of the full forward."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("family", ["bert", "xlmr"])
def test_the_teacher_keeps_only_the_mapped_layers_and_they_equal_the_full_forwards(family, tiny_bert_dir,
                                                                                   tiny_xlmr_dir):
    from transformers import AutoModelForMaskedLM

    import polyglot_distil.models.encoder as encoder
    from polyglot_distil.distill.general import RECIPES, teacher_outputs

    folder = tiny_bert_dir if family == "bert" else tiny_xlmr_dir
    teacher = AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager").eval()
    layers = teacher.config.num_hidden_layers
    layer_map = [1, layers - 1]
    ids = torch.randint(5, 200, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    weights = RECIPES["bistil"]
    full = teacher_outputs(teacher, batch, weights, None)
    assert len(full["hidden"]) == layers + 1 and len(full["attentions"]) == layers

    asked = []
    forward = teacher.base_model.forward
    teacher.base_model.forward = lambda *a, **k: asked.append(k) or forward(*a, **k)
    kept = teacher_outputs(teacher, batch, weights, None, layer_map)
    assert asked[-1]["output_attentions"] is False  # the maps come from hooks on the mapped layers only
    assert asked[-1]["output_hidden_states"] == [0, 2, layers]
    assert sorted(kept["hidden"]) == [0, 2, layers] and sorted(kept["attentions"]) == layer_map
    for k in kept["hidden"]:
        assert torch.equal(kept["hidden"][k], full["hidden"][k])
    for k in layer_map:
        assert torch.equal(kept["attentions"][k], full["attentions"][k])
    assert encoder._attention_recorder(teacher) is not None

    no_attention = teacher_outputs(teacher, batch, RECIPES["distilbert"], None, layer_map)
    assert no_attention["attentions"] is None and no_attention["hidden"] is None
