"""A demo fleet shaped like a real three-cloud deployment of the same open model.

The numbers are illustrative but grounded, so that cost- and latency-aware
routing has realistic trade-offs to make in the demo:

* **Latency** grows with distance from a client in Western Europe / US East
  (20-80 ms median TTFT), with small heavy tails (1-2 % of requests +300-900 ms)
  because tails, not medians, are what hedging is for.
* **Price per million tokens** is derived from approximate public on-demand
  H100 prices per GPU-hour in each cloud region (8-GPU instance price / 8,
  2024-2025 list prices, rounded), assuming an 8B model served by vLLM at
  ~8,000 output tokens/s per GPU and prefill ~10x cheaper than decode (the
  same ratio llm_multicloud's catalog applies to ``gpu_hour`` pricing)::

      output $/Mtok = gpu_hour_usd / (8000 * 3600 / 1e6)   input = output / 10

  The absolute values are far below a managed API's list price (no margin, full
  utilisation); what matters for routing is the *spread* between regions.
"""

from __future__ import annotations

from .spec import FleetSpec, Latency, RegionSpec

__all__ = ["GPU_HOUR_USD", "demo_spec"]

LLAMA_8B = "llama-3.1-8b"
LLAMA_70B = "llama-3.1-70b"
EMBED = "bge-m3"

#: Approximate on-demand H100 price per GPU-hour (USD) by deployment.
GPU_HOUR_USD: dict[str, float] = {
    "aws-use1": 6.88,  # p5.48xlarge us-east-1 after the mid-2025 price cut, / 8
    "aws-euc1": 8.26,  # same instance in eu-central-1 (Frankfurt), ~20 % regional premium
    "gcp-usc1": 11.06,  # a3-highgpu-8g us-central1, / 8
    "gcp-euw4": 12.17,  # a3-highgpu-8g europe-west4 (Eemshaven, NL), / 8
    "azure-jpe": 12.90,  # ND96isr H100 v5 japaneast, / 8
    "onprem-vllm": 2.20,  # owned H100 amortised over 3 years incl. power and hosting
}

_OUTPUT_TOKENS_PER_GPU_HOUR_M = 8000 * 3600 / 1e6  # 28.8 million output tokens per GPU-hour


def _pricing(region_id: str) -> dict[str, float]:
    output = GPU_HOUR_USD[region_id] / _OUTPUT_TOKENS_PER_GPU_HOUR_M
    return {"input_per_mtok": round(output / 10, 5), "output_per_mtok": round(output, 4)}


def demo_spec() -> FleetSpec:
    """Six deployments across AWS, GCP, Azure and an on-prem vLLM box.

    Served model names differ per provider on purpose (vLLM uses the Hugging
    Face id, Azure AI its catalog name, ...): mapping a logical model to each
    endpoint's name is part of what the client library does.
    """
    hf_8b = "meta-llama/Llama-3.1-8B-Instruct"
    hf_70b = "meta-llama/Llama-3.1-70B-Instruct"
    regions = [
        RegionSpec(
            id="aws-use1",
            provider="aws",
            region="us-east-1",
            models={LLAMA_8B: hf_8b, LLAMA_70B: hf_70b, EMBED: "BAAI/bge-m3"},
            api_key="sk-fleet-aws-use1",
            latency=Latency(ttft_ms=35, ttft_jitter=0.2, tail_prob=0.02, tail_ms=600, itl_ms=9),
            pricing=_pricing("aws-use1"),
            seed=101,
        ),
        RegionSpec(
            id="aws-euc1",
            provider="aws",
            region="eu-central-1",
            models={LLAMA_8B: hf_8b, EMBED: "BAAI/bge-m3"},
            api_key="sk-fleet-aws-euc1",
            latency=Latency(ttft_ms=22, ttft_jitter=0.2, tail_prob=0.01, tail_ms=400, itl_ms=9),
            pricing=_pricing("aws-euc1"),
            seed=102,
        ),
        RegionSpec(
            id="gcp-euw4",
            provider="gcp",
            region="europe-west4",
            models={LLAMA_8B: hf_8b, LLAMA_70B: hf_70b},
            api_key="sk-fleet-gcp-euw4",
            latency=Latency(ttft_ms=25, ttft_jitter=0.25, tail_prob=0.02, tail_ms=500, itl_ms=10),
            pricing=_pricing("gcp-euw4"),
            seed=103,
        ),
        RegionSpec(
            id="gcp-usc1",
            provider="gcp",
            region="us-central1",
            models={LLAMA_8B: hf_8b},
            api_key="sk-fleet-gcp-usc1",
            latency=Latency(ttft_ms=45, ttft_jitter=0.2, tail_prob=0.01, tail_ms=500, itl_ms=10),
            pricing=_pricing("gcp-usc1"),
            seed=104,
        ),
        RegionSpec(
            id="azure-jpe",
            provider="azure",
            region="japaneast",
            models={LLAMA_8B: "Meta-Llama-3.1-8B-Instruct", LLAMA_70B: "Meta-Llama-3.1-70B-Instruct"},
            api_key="sk-fleet-azure-jpe",
            latency=Latency(ttft_ms=80, ttft_jitter=0.15, tail_prob=0.015, tail_ms=900, itl_ms=11),
            pricing=_pricing("azure-jpe"),
            seed=105,
        ),
        RegionSpec(
            id="onprem-vllm",
            provider="onprem",
            region="eu-dc1",
            models={LLAMA_8B: hf_8b, EMBED: "BAAI/bge-m3"},
            api_key="sk-fleet-onprem",
            latency=Latency(ttft_ms=20, ttft_jitter=0.3, tail_prob=0.02, tail_ms=300, itl_ms=12),
            pricing=_pricing("onprem-vllm"),
            seed=106,
            catalog={"country": "DE"},  # a rack in Frankfurt: no cloud region code to derive it from
        ),
    ]
    return FleetSpec(regions=regions)
