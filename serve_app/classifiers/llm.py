"""Zero-shot LLM classifiers on vLLM: an in-process ``AsyncLLM`` (continuous batching; its engine core
and workers are child processes of this one) and three modes.

- ``paper``: the study's DSPy prompt, free generation (``paper_max_tokens``), label parsed from the
  ``[[ ## category ## ]]`` field; reasoning models think first, at most ``reasoning_budget_tokens``,
  after which ``</think>`` is forced.
- ``choice``: same prompt, answer prefilled up to the field, generation constrained to the labels.
- ``score``: same prefilled prompt, one forward pass; each label's log-probability (of its first token
  when first tokens differ, else of its whole token sequence) plus ``label_bias``; argmax.

Token counts, alike in every mode: ``Prediction.prompt_tokens`` is the text's prompt in its mode,
counted once, though the mode may give the engine more (``choice`` asking again with room to finish,
a reasoning model's answer after its thought, ``score`` over each label's sequence); what the engine
computed for it, prefix-cache hits excluded, is the tag's ``attribution.tokens.prefill_tokens``.
``generated_tokens``: every token the engine generated for the text, over all its calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import struct
import uuid
from pathlib import Path
from typing import Any

from serve_app.classifiers import llm_engine, llm_stages, prompts
from serve_app.classifiers.base import WARM_UP_TEXT, Classifier, ClassifierInfo, InputRejected, WorkSink
from serve_app.classifiers.llm_config import MODES, PREPARED_PREFIX, LLMSpec
from serve_app.classifiers.llm_workers import WHERE_METHOD
from serve_app.energy.keys import WorkerProcess
from serve_app.env import scoped_env
from serve_app.wire import Prediction

log = logging.getLogger(__name__)
WHERE_TIMEOUT_S = 60.0
_TEXT_SLOT = "\ue000"  # a private-use character standing for the text while the shared prefix is measured

# A `WorkSink` receives the tokens the engine processed for a call since its last report:
# prefill: prompt tokens computed (prefix-cache hits excluded), decode: one per decode step
# (``energy.ledger.Ledger.work`` for the request).


def _no_sink(prefill_tokens: int, decode_tokens: int) -> None:
    return None


class UnknownModeError(ValueError):
    """The requested mode is not one of ``paper``, ``choice``, ``score``."""


def resolve_model(model: str) -> str:
    """``prepared:smollm2`` / ``prepared:tiny`` -> the cached directory (built if missing); else as is."""
    if not model.startswith(PREPARED_PREFIX):
        return model
    from serve_app import models_prepare

    name = model[len(PREPARED_PREFIX) :]
    if name == "smollm2":
        return str(models_prepare.prepare_smollm2())
    if name == "tiny":
        return str(models_prepare.make_tiny_llama())
    raise ValueError(f"unknown prepared model {name!r} (known: smollm2, tiny)")


def count_parameters(model_dir: str) -> int | None:
    """Parameters in a local directory's safetensors files (headers only); None when not local."""
    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    total = 0
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                total += math.prod(meta["shape"])
    return total


class LLMClassifier(Classifier):
    """A loaded zero-shot classifier. Build it with :func:`build_llm_classifier`. vLLM batches its
    requests itself (continuous batching) and reports each step's tokens (``stepped``)."""

    stepped = True

    def __init__(self, spec: LLMSpec, engine: Any, tokenizer: Any, model_path: str) -> None:
        self.spec = spec
        self._engine = engine
        self._tok = tokenizer
        self._labels = tuple(spec.labels)
        self._engine_children: list[int] = []
        self._stages: list[Any] = []  # PipelineStage actors (CPU stages on other nodes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pad = self._aligned_pad() if spec.align_prefix else ""
        shared = self._shared_tokens(self._pad)
        probe = self._render("")
        self._opens_think = spec.reasoning and prompts.opens_think(probe)
        self._prefill = prompts.answer_prefill(spec.reasoning, self._opens_think)
        self._overhead_tokens = len(self._encode(probe))
        self._label_ids = self._label_token_ids()
        self._first_tokens = prompts.first_token_plan(self._label_ids)
        self._scored_ids = self._scored_label_ids()
        # The constraint may spell a label in any tokens, down to one per byte, then the end token.
        # Labels of one token each are first tried with one token (``_choice``).
        self._choice_full_tokens = max(len(label.encode("utf-8")) for label in self._labels) + 1
        single = self._first_tokens is not None and all(len(i) == 1 for i in self._label_ids.values())
        self._choice_max_tokens = 1 if single else self._choice_full_tokens
        self._close_ids = self._encode("\n" + prompts.THINK_CLOSE + "\n\n")
        self._max_model_len = int(getattr(getattr(engine, "model_config", None), "max_model_len", 0) or 0)
        devices = tuple(f"gpu:{r}" for r in range(spec.world_size)) if spec.on_gpu else ("cpu",)
        super().__init__(
            ClassifierInfo(
                model_id=spec.id,
                kind="llm",
                labels=self._labels,
                devices=devices,
                parameters=count_parameters(model_path),
                trainable_parameters=0,  # zero-shot: nothing is trained
                details={
                    "modes": list(MODES),
                    "default_mode": spec.default_mode,
                    "model": spec.served_model_name or spec.model,
                    "reasoning": spec.reasoning,
                    "score_strategy": "first_token" if self._first_tokens else "sequence",
                    "shared_prefix_tokens": shared,
                    "prefix_pad_tokens": shared - self._shared_tokens(""),
                    "tensor_parallel_size": spec.tensor_parallel_size,
                    "pipeline_parallel_size": spec.pipeline_parallel_size,
                },
            )
        )

    # -- the Classifier surface -------------------------------------------------------------------
    def request_weight(self, texts: list[str]) -> float:
        """Estimated prompt tokens of these texts (template overhead + each text's tokens)."""
        return float(sum(self._overhead_tokens + len(self._encode(t)) for t in texts))

    async def predict(
        self, texts: list[str], mode: str | None = None, on_work: WorkSink | None = None
    ) -> list[Prediction]:
        """Classify ``texts`` (one engine request each, batched by the engine) in ``mode``; every
        engine step's tokens for them go to ``on_work`` as the engine reports them."""
        self._bind_loop()
        name = mode or self.spec.default_mode
        run = {"paper": self._paper, "choice": self._choice, "score": self._score}.get(name)
        if run is None:
            raise UnknownModeError(f"unknown mode {name!r}; known: {', '.join(MODES)}")
        sink = on_work or _no_sink
        prompt_ids = [self._prompt_ids(t, name) for t in texts]
        for i, ids in enumerate(prompt_ids):  # all checked before any reaches the engine
            self._check_fits(i, len(ids), name)
        return list(await asyncio.gather(*(run(ids, sink) for ids in prompt_ids)))

    async def workers(self) -> list[WorkerProcess]:
        """Every vLLM worker (one per TP x PP rank): its process, Ray node and GPU (see
        ``llm_workers``), so that the replica's meter covers all of them. Call it on the loop that
        serves requests (the engine binds to the first loop that uses it)."""
        self._bind_loop()
        places = await self._engine.collective_rpc(WHERE_METHOD, timeout=WHERE_TIMEOUT_S)
        places = sorted(places, key=lambda p: (p["rank"] is None, p["rank"] or 0))
        stages = list(await asyncio.gather(*(s.where.remote() for s in self._stages)))
        keys = ("rank", "pid", "host", "device", "gpu")
        stage_nodes = {s["node_id"] for s in stages}
        self._info.details["workers"] = [
            {**{k: p[k] for k in keys}, **({"node_id": p["node_id"]} if p["node_id"] in stage_nodes else {})}
            for p in places
        ]
        self._info.details["stages"] = [{"node_rank": i + 1, **s} for i, s in enumerate(stages)]
        # A stage's ranks are children of its actor: watching the actor (children included) covers them.
        workers = [
            WorkerProcess(int(s["pid"]), s["node_id"], (), f"vllm-stage-{i + 1}")
            for i, s in enumerate(stages)
        ]
        workers += [
            WorkerProcess(
                int(p["pid"]),
                p["node_id"],
                (str(p["gpu"]),) if p["gpu"] else (),
                f"vllm-rank-{p['rank']}",
            )
            for p in places
            if p["node_id"] is None or p["node_id"] not in stage_nodes
        ]
        return workers

    async def warm_up(self) -> None:
        """One short text in each mode, unless the spec says not to (``warm_up``). A fresh engine's
        first request runs many times slower (first shapes; for ``choice`` the structured-output
        grammar): on vLLM for CPU, SmolLM2's first ``score`` request after readiness took 3.1 s against
        0.28 s for the next. It also puts the instruction's whole blocks in the prefix cache, as any
        request does for the ones after it. ``paper`` stops after two tokens (a reasoning model would
        think up to its budget). Call it on the loop that serves requests, before they come."""
        if not self.spec.warm_up:
            return
        self._bind_loop()
        prompt_ids = self._encode(self._render(WARM_UP_TEXT))
        await self._generate(prompt_ids, self._params(max_tokens=2), _no_sink)
        for mode in ("choice", "score"):
            await self.predict([WARM_UP_TEXT], mode)

    async def check_health(self) -> None:
        """vLLM's own check: raises ``EngineDeadError`` once the engine core (or a worker or a
        pipeline stage it waits on) has died; a closed classifier is not healthy either."""
        if self._engine is None:
            raise RuntimeError("the LLM engine is closed")
        await self._engine.check_health()

    async def reset_prefix_cache(self) -> None:
        """Forget cached prompt prefixes (benchmarks: each mode starts from the same cold cache)."""
        await self._engine.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down; kill engine processes that outlive it (they can ignore SIGTERM)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.shutdown()
                loop = self._loop
                if loop is not None and not loop.is_closed() and not loop.is_running():
                    # The engine schedules closing its asyncio sockets on its loop; a loop that is not
                    # running (scripts, tests) must turn once, or ZMQ's context termination hangs later.
                    loop.run_until_complete(asyncio.sleep(0.1))
            except Exception:  # pragma: no cover - best effort on teardown
                log.exception("engine shutdown failed")
        llm_engine.kill_pids(self._engine_children)
        self._engine_children = []
        llm_stages.stop_stages(self._stages)
        self._stages = []

    def _bind_loop(self) -> None:
        """Remember the loop that first drives the engine: its output handler lives there, and `close`
        turns it once where it is not running."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    # -- prompts ----------------------------------------------------------------------------------
    def _render(self, text: str, pad: str | None = None) -> str:
        """The chat-templated prompt of ``text``; ``pad`` ends the system message (default: the one
        :meth:`_aligned_pad` chose)."""
        messages = prompts.chat_messages(text, self._labels, self._pad if pad is None else pad)
        rendered: str = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return rendered

    def _shared_tokens(self, pad: str) -> int:
        """The tokens every prompt shares (all before the text) when ``pad`` ends the system message."""
        head = self._render(_TEXT_SLOT, pad).split(_TEXT_SLOT, 1)[0]
        return len(self._encode(head))

    def _aligned_pad(self) -> str:
        """The pad that makes the shared prefix whole KV-cache blocks (``LLMSpec.align_prefix``); ""
        without a prefix cache."""
        cache = getattr(getattr(self._engine, "vllm_config", None), "cache_config", None)
        block = int(getattr(cache, "block_size", 0) or 0)
        if block <= 1 or not getattr(cache, "enable_prefix_caching", False):
            return ""
        return prompts.prefix_pad(self._shared_tokens, block, 2 * block)

    def _prompt_ids(self, text: str, mode: str) -> list[int]:
        """The prompt of ``text`` in ``mode``: ``choice`` and ``score`` end in the prefilled answer head."""
        return self._encode(self._render(text) + ("" if mode == "paper" else self._prefill))

    def _check_fits(self, index: int, n_prompt: int, mode: str) -> None:
        """Refuse a prompt the engine would refuse (it needs room for one token after it, and ``score``
        over label sequences for the longest label's tokens too), or one that leaves ``choice`` no room
        to write the longest label and end it, as the client's error."""
        if not self._max_model_len:
            return
        room = 1
        if mode == "score" and not self._first_tokens:
            room += max(map(len, self._scored_ids.values()))
        elif mode == "choice":
            room += max(map(len, self._label_ids.values()))  # the label, then its end token
        elif mode == "paper" and self.spec.reasoning:
            room += len(self._close_ids)  # a thought cut short is closed before the answer
        if n_prompt + room > self._max_model_len:
            raise InputRejected(
                413,
                "text_too_long",
                f"texts[{index}] makes a prompt of {n_prompt} tokens; model {self.spec.id!r} takes at most "
                f"{self._max_model_len - room} (max_model_len {self._max_model_len})",
                f"texts[{index}]",
            )

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = self._tok(text, add_special_tokens=False)["input_ids"]
        return ids

    def _label_token_ids(self) -> dict[str, list[int]]:
        """Each label's tokens as they follow the prefilled answer head."""
        tail = self._prefill
        head_ids = self._encode(tail)
        out = {}
        for label in self._labels:
            ids = prompts.continuation_ids(head_ids, self._encode(tail + label))
            out[label] = ids if ids else self._encode(label)
        return out

    def _scored_label_ids(self) -> dict[str, list[int]]:
        """What ``score`` over label sequences scores: each label's tokens and the first token after
        the label in the study's format (the line break that ends the field). Without it a label
        that is the start of another ("World", "World Politics") could never lose to it: its tokens
        are a part of the other's. A tokenizer that merges the label's end with the break keeps the
        label's tokens alone."""
        tail = self._prefill
        head_ids = self._encode(tail)
        out = {}
        for label, ids in self._label_ids.items():
            ended = prompts.continuation_ids(head_ids, self._encode(tail + label + "\n\n"))
            exact = ended is not None and len(ended) > len(ids) and ended[: len(ids)] == ids
            out[label] = ended[: len(ids) + 1] if exact and ended is not None else list(ids)
        return out

    # -- engine calls -----------------------------------------------------------------------------
    async def _generate(self, prompt_ids: list[int], params: Any, on_work: WorkSink) -> Any:
        """One engine request; returns vLLM's final ``RequestOutput``. Its per-step outputs report work: the first one the prefill (the prompt
        less its prefix-cache hits; the whole prefill, even if the engine ran it in chunks) and its
        first token, each later one the tokens decoded since (outputs are cumulative, and several
        steps may arrive in one output when this loop falls behind)."""
        final = None
        seen = -1  # generated tokens reported so far; -1: prefill not reported yet
        async for out in self._engine.generate({"prompt_token_ids": prompt_ids}, params, uuid.uuid4().hex):
            final = out
            n = len(out.outputs[0].token_ids) if out.outputs else 0
            if seen < 0:
                computed = len(prompt_ids) - (out.num_cached_tokens or 0)
                on_work(max(computed, 0), max(n - 1, 0))
                seen = n
            elif n > seen:
                on_work(0, n - seen)
                seen = n
        if final is None:  # pragma: no cover - the engine always yields a final output
            raise RuntimeError("vLLM returned no output")
        return final

    @staticmethod
    def _params(**kwargs: Any) -> Any:
        from vllm.sampling_params import SamplingParams

        return SamplingParams(temperature=0.0, **kwargs)

    async def _paper(self, prompt_ids: list[int], on_work: WorkSink) -> Prediction:
        if not self.spec.reasoning:
            params = self._params(max_tokens=self.spec.paper_max_tokens)
            g = (await self._generate(prompt_ids, params, on_work)).outputs[0]
            generated, n_gen = g.text, len(g.token_ids)
        else:
            generated, n_gen = await self._paper_reasoning(prompt_ids, on_work)
        parsed = prompts.parse_answer(generated, self._labels, self.spec.reasoning)
        return Prediction(
            label=parsed.label,
            prompt_tokens=len(prompt_ids),
            generated_tokens=n_gen,
            parsed=parsed.parsed,
            raw=generated,
        )

    async def _paper_reasoning(self, prompt_ids: list[int], on_work: WorkSink) -> tuple[str, int]:
        """Think at most ``reasoning_budget_tokens``, then answer in ``paper_max_tokens``."""
        budget, answer_max = self.spec.reasoning_budget_tokens, self.spec.paper_max_tokens
        if self._max_model_len:  # the thought, its forced close and the answer must fit the context
            budget = max(
                0, min(budget, self._max_model_len - len(prompt_ids) - len(self._close_ids) - answer_max)
            )
        text, ids = "", []
        finish: str | None = "length"
        if budget > 0:
            g = (await self._generate(prompt_ids, self._params(max_tokens=budget), on_work)).outputs[0]
            text, ids, finish = g.text, list(g.token_ids), g.finish_reason
        if prompts.THINK_CLOSE in text:
            if finish != "length":
                return text, len(ids)
            g2 = (
                await self._generate(prompt_ids + ids, self._params(max_tokens=answer_max), on_work)
            ).outputs[0]
            return text + g2.text, len(ids) + len(g2.token_ids)
        if finish != "length":  # stopped without ever closing the thought
            return text, len(ids)
        close = "\n" + prompts.THINK_CLOSE + "\n\n"
        forced = prompt_ids + ids + self._encode(close)
        g2 = (await self._generate(forced, self._params(max_tokens=answer_max), on_work)).outputs[0]
        return text + close + g2.text, len(ids) + len(g2.token_ids)

    async def _choice(self, prompt_ids: list[int], on_work: WorkSink) -> Prediction:
        from vllm.sampling_params import StructuredOutputsParams

        params = self._params(
            max_tokens=self._choice_max_tokens,
            structured_outputs=StructuredOutputsParams(choice=list(self._labels)),
        )
        g = (await self._generate(prompt_ids, params, on_work)).outputs[0]
        n_prompt, n_gen = len(prompt_ids), len(g.token_ids)
        if self._choice_max_tokens < self._choice_full_tokens and not prompts.settles(g.text, self._labels):
            # One token began more than one label (a piece such as "ne" of "neutral" and "negative",
            # or a label that starts another): ask again with room to finish (the prompt is cached).
            params = self._params(
                max_tokens=self._choice_full_tokens,
                structured_outputs=StructuredOutputsParams(choice=list(self._labels)),
            )
            g = (await self._generate(prompt_ids, params, on_work)).outputs[0]
            n_gen += len(g.token_ids)  # the same prompt again: ``prompt_tokens`` counts it once
        parsed = prompts.parse_choice(g.text, self._labels, finished=g.finish_reason != "length")
        return Prediction(
            label=parsed.label,
            prompt_tokens=n_prompt,
            generated_tokens=n_gen,
            parsed=parsed.parsed,
            raw=g.text,
        )

    async def _score(self, prompt_ids: list[int], on_work: WorkSink) -> Prediction:
        if self._first_tokens is not None:
            token_ids = list(self._first_tokens.values())
            params = self._params(max_tokens=1, logprob_token_ids=token_ids)
            g = (await self._generate(prompt_ids, params, on_work)).outputs[0]
            step = g.logprobs[0] if g.logprobs else {}
            # a label whose token the engine gave no log-probability is left out (JSON has no -inf)
            logprobs = {label: step[tid].logprob for label, tid in self._first_tokens.items() if tid in step}
            if not logprobs:
                raise RuntimeError(f"the engine returned no log-probability for any label of {self.spec.id}")
            n_prompt, n_gen = len(prompt_ids), len(g.token_ids)
        else:
            logprobs, n_prompt, n_gen = await self._score_sequences(prompt_ids, on_work)
        scores = prompts.biased_scores(logprobs, self.spec.label_bias)
        label = prompts.argmax_label(scores, self._labels)
        return Prediction(label=label, scores=scores, prompt_tokens=n_prompt, generated_tokens=n_gen)

    async def _score_sequences(
        self, prompt_ids: list[int], on_work: WorkSink
    ) -> tuple[dict[str, float], int, int]:
        """Labels sharing a first token: score each label's whole token sequence (one request each)."""

        async def one(label: str) -> tuple[str, float]:
            ids = self._scored_ids[label]
            params = self._params(max_tokens=1, prompt_logprobs=0)
            out = await self._generate(prompt_ids + ids, params, on_work)
            rows = (out.prompt_logprobs or [])[-len(ids) :]
            total = sum(row[tid].logprob for row, tid in zip(rows, ids, strict=True) if row and tid in row)
            return label, total

        results = await asyncio.gather(*(one(label) for label in self._labels))
        # the text's prompt once (``Prediction.prompt_tokens``), though each label's request repeats it
        return dict(results), len(prompt_ids), len(results)


def build_llm_classifier(spec: LLMSpec) -> LLMClassifier:
    """Start the vLLM engine for ``spec`` in this process and wrap it (blocks until the engine is up).

    The spec's :meth:`~LLMSpec.engine_env` is this process's environment while the engine starts, so
    the engine core and workers inherit it (a Serve replica has it already through ``runtime_env``;
    scripts and tests get it here); the previous values come back afterwards.
    """
    from transformers import AutoTokenizer

    model_path = resolve_model(spec.model)
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or model_path)
    before = llm_engine.child_pids()
    master, stages = None, []
    if spec.stage_nodes > 1:  # the other stages first: the engine's start waits for their ranks
        master = llm_stages.master_address()
        remote = [
            llm_engine.engine_args(spec, model_path, rank, master) for rank in range(1, spec.stage_nodes)
        ]
        env = {**spec.engine_env(), **spec.remote_stage_env}
        stages = llm_stages.start_stages(remote, spec.cpus_per_worker * spec.tensor_parallel_size, env)
    try:
        with scoped_env(spec.engine_env()):
            from vllm.v1.engine.async_llm import AsyncLLM

            args = llm_engine.engine_args(spec, model_path, 0, master)
            engine = llm_engine.start_engine(AsyncLLM, args, spec.executor_backend == "ray")
    except BaseException:
        llm_engine.kill_pids(sorted(llm_engine.child_pids() - before))
        llm_stages.stop_stages(stages)
        raise
    children = sorted(llm_engine.child_pids() - before)
    try:
        clf = LLMClassifier(spec, engine, tokenizer, model_path)
    except BaseException:
        engine.shutdown()
        llm_engine.kill_pids(children)
        llm_stages.stop_stages(stages)
        raise
    finally:
        # vLLM's import above leaves a stored traceback whose frames reach this one, so this frame
        # outlives the call; it must not hold the engine past close() (its __del__ at exit fails).
        del engine
    clf._engine_children = children
    clf._stages = stages
    return clf
