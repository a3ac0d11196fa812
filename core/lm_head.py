"""A plain LM head for TRL trainers off GPU."""


def plain_lm_head(model) -> None:
    """Give `model(..., labels=, fused_lm_head=True)` (how TRL asks for per-token log-probs) a plain implementation.

    TRL patches the LM head with a chunked log-prob kernel that saves GPU memory by never materialising the
    [B, T, V] logits. Without Triton (on CPU) its tiles run as many small torch ops with a hand-written backward,
    which profiled at over half of a DPO step on the tiny model (SFTTrainer uses the same head). One log_softmax
    over the full logits computes the same fields (zero where the label is -100), and is the faster path wherever
    the logits fit in memory.
    """
    import types

    import torch
    import torch.nn.functional as F
    from trl.trainer.utils import FusedCausalLMOutput

    import functools

    original = type(model).forward

    @functools.wraps(original)  # generate reads the signature (position_ids) to know what to pass
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kw):
        if not fused_lm_head:
            return original(self, *args, labels=labels, **kw)
        kw["use_cache"] = False
        logits = original(self, *args, **kw).logits[:, :-1].float()
        labels = labels[:, 1:]
        mask = labels != -100
        logp = F.log_softmax(logits, dim=-1)
        log_probs = torch.gather(logp, 2, labels.clamp(min=0)[..., None]).squeeze(-1).masked_fill(~mask, 0)
        with torch.no_grad():  # metrics only, as in TRL's kernel
            entropy = -(logp.exp() * logp).sum(-1).masked_fill(~mask, 0)
            mean_logits = logits.mean(-1).masked_fill(~mask, 0)
            is_top1 = (logits.argmax(-1) == labels) & mask
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        # log_sum_sq_probs is only read by use_weighting (WPO), which this stage does not use
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=None,
                                   mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)
