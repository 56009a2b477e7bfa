"""Row packing of the policy (shift each row's tokens to column 0, pad to whole micro-batches) and back."""

import pytest
import torch

from harmony_mcore.policy import _pack, _unpack


def test_pack_unpack_roundtrip_left_and_right_padding():
    attn = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]])
    ids = torch.arange(18).reshape(3, 6)
    packed = _pack(attn, {"ids": ids}, {"adv": torch.tensor([1.0, 2.0, 3.0])}, rows_multiple=4, seq_multiple=4)
    assert packed.seq == 8 and packed.tensors["ids"].shape == (4, 8)  # 6 tokens rounded to 8; 3 rows to 4
    assert packed.tensors["ids"][0, :3].tolist() == [2, 3, 4] and packed.tensors["ids"][2, :2].tolist() == [13, 14]
    assert packed.tensors["adv"].tolist() == [1.0, 2.0, 3.0, 0.0]
    assert not packed.tensors["valid"][3].any() and packed.tensors["valid"][1, :6].all()
    back = _unpack(packed, packed.tensors["ids"].float())
    assert torch.equal(back, (ids * attn).float())


def test_non_contiguous_attention_mask_is_rejected():
    with pytest.raises(ValueError, match="one contiguous run of tokens per row"):
        _pack(torch.tensor([[1, 0, 1]]), {"ids": torch.zeros(1, 3, dtype=torch.long)}, {}, rows_multiple=1,
              seq_multiple=1)
