#!/usr/bin/env bash
# The device check, in one call (under 8 minutes on an H100; everything generated on the machine, random
# weights, nothing downloaded). Prints the device, then step time, images/s, ratios and peak memory:
#   1. DeepLabV3+ ResNet-50 at 320 px: FixMatch vs MaskMatch (method_cost.py), fp32 and bf16-mixed;
#      the channels-last layout against the default (memory_format.py), bf16-mixed;
#   2. DINOv2-S under the DPT head at 518 px: FixMatch vs MaskMatch, masked view in pixels vs tokens
#      (vit_cost.py), fp32 and bf16-mixed;
#   3. both again in bf16-mixed with the network under torch.compile (--compile; the token-masked
#      forward runs eagerly: compile wraps only the network's forward).
#   bash benchmarks/gpu_check.sh                  # on the lent GPU
#   DEVICE=cpu VIT_SIZE=56 REPEATS=1 bash benchmarks/gpu_check.sh   # the same script, tiny, on a CPU
set -euo pipefail
cd "$(dirname "$0")"
DEVICE=${DEVICE:-cuda}
VIT_SIZE=${VIT_SIZE:-518}
REPEATS=${REPEATS:-5}
export NO_ALBUMENTATIONS_UPDATE=1
python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
CNN="DeepLabV3+ ResNet-50, 320 px"
if [ "$DEVICE" = cpu ]; then CNN="demo (FPN EfficientNet-Lite0, 64 px)"; fi
for precision in 32-true bf16-mixed; do
  python method_cost.py --device "$DEVICE" --precision "$precision" --models "$CNN" --repeats "$REPEATS" --rounds 1 \
    --methods "MaskMatch, 3 teacher scales (paper)" "MaskMatch, 1 teacher scale (demo)"
  python vit_cost.py --device "$DEVICE" --precision "$precision" --size "$VIT_SIZE" --repeats "$REPEATS" --rounds 1
done
if [ "$DEVICE" = cpu ] && [ -z "${COMPILE_ON_CPU:-}" ]; then
  # inductor's CPU compile of these steps ran for over 90 CPU-minutes on 2 cores without finishing
  echo "torch.compile rows skipped on CPU (COMPILE_ON_CPU=1 runs them)"
else
  python method_cost.py --device "$DEVICE" --precision bf16-mixed --compile --models "$CNN" --repeats "$REPEATS" \
    --rounds 1 --methods "MaskMatch, 3 teacher scales (paper)" "MaskMatch, 1 teacher scale (demo)"
  python vit_cost.py --device "$DEVICE" --precision bf16-mixed --compile --size "$VIT_SIZE" --repeats "$REPEATS" --rounds 1
fi
python memory_format.py --device "$DEVICE" --precision bf16-mixed --models "$CNN" --repeats "$REPEATS" --rounds 1
