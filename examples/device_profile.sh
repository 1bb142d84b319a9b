#!/usr/bin/env bash
# The device workflow: quantize and export on the laptop, copy to the device, bench there, compare.
#   laptop:  bash examples/device_profile.sh laptop            (needs pip install -e ".[quantize,plot]")
#   device:  bash examples/device_profile.sh device            (needs only pip install "edgeq[runtime]")
#   ARM:     bash examples/device_profile.sh arm-board         (a Linux ARM board: Raspberry Pi, Jetson, ...)
#   laptop:  bash examples/device_profile.sh compare phone.json
set -euo pipefail
case "${1:-}" in
  laptop)
    edgeq quantize --out w4 --quiet                                  # GPTQ W4 g128 of the bundled model
    edgeq quantize --bits 2 --group-size 64 --out w2 --quiet
    edgeq export --fp32 --out fp32-onnx
    edgeq export w4 --out w4-onnx --ort-format
    edgeq export w2 --out w2-onnx
    edgeq bench fp32-onnx w4-onnx w2-onnx --threads 2 --json laptop.json --plot laptop.png
    echo "now copy fp32-onnx w4-onnx w2-onnx to the device, e.g. scp -r *-onnx phone:edgeq/"
    ;;
  device)
    # --provider auto takes the device's accelerator when this onnxruntime build has one (NNAPI, QNN,
    # CoreML, XNNPACK); name it explicitly to be refused rather than silently run on the CPU
    edgeq bench fp32-onnx w4-onnx w2-onnx --threads "${THREADS:-4}" --provider "${PROVIDER:-cpu}" \
        --json "$(hostname).json"
    echo "copy $(hostname).json back to the laptop"
    ;;
  arm-board)
    # On the board: python3 -m venv ~/edgeq && . ~/edgeq/bin/activate && pip install "edgeq[runtime]"
    # (PyPI has aarch64 wheels of numpy, onnxruntime and tokenizers), copy the folders over, then this.
    # The perplexity check first: a layout whose ARM kernels disagree with x86 shows here, not in latency.
    # Checked on this project only under qemu-user emulation (benchmarks/aarch64/compare.py: perplexity and
    # greedy tokens against x86 for every layout); no real ARM board has run it yet.
    for m in fp32-onnx w4-onnx w2-onnx; do
      edgeq eval "$m" --seq-len 128 --max-windows 4 --quiet --json "$(hostname)-$m-eval.json"
    done
    edgeq bench fp32-onnx w4-onnx w2-onnx --threads "${THREADS:-4}" --json "$(hostname).json"
    echo "copy $(hostname).json and $(hostname)-*-eval.json back; compare the perplexities with edgeq eval" \
         "of the same folders on the laptop (same --seq-len and --max-windows)"
    ;;
  compare)
    shift
    edgeq bench compare laptop.json "$@" --plot devices.png
    ;;
  *)
    sed -n 2,6p "$0"; exit 2 ;;
esac
