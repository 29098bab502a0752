#!/usr/bin/env bash
# Collects the Debian packages the build needs besides LibTorch and CUDA (yaml-cpp, spdlog, fmt,
# nlohmann-json, CLI11, PCRE2, ICU, GoogleTest, Gloo headers) as .deb files in .gpu_deps/debs,
# for a machine that has no package registry (the GPU machine of the device tool: carry
# .gpu_deps there; scripts/gpu_check.sh unpacks them into a private prefix). ~22 MB.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=$repo/.gpu_deps/debs
mkdir -p "$dest"
cd "$dest"
pkgs=(libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
      nlohmann-json3-dev libcli11-dev libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0
      libpcre2-posix3 libicu-dev libicu72 libgtest-dev libgmock-dev libgloo-dev)
apt-get download "${pkgs[@]}" 2>/dev/null
ls -1 "$dest"
du -sh "$dest"
