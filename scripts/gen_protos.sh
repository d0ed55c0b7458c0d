#!/usr/bin/env bash
# Generates Python code for protos/memoryd/v1 into OUT/memoryd/v1.
# Usage: scripts/gen_protos.sh PYTHON OUT
set -euo pipefail
py=$1; out=$2
googleapis=$("$py" -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(m.__file__)))))')
mkdir -p "$out/memoryd/v1"
# googleapis-common-protos ships google/longrunning/operations.proto as
# operations_proto.proto (its Python module registers the canonical name):
# give protoc the canonical path, so the generated code imports
# google.longrunning.operations_pb2 and grpcurl sees the usual file name.
lro=$(mktemp -d); trap 'rm -rf "$lro"' EXIT
mkdir -p "$lro/google/longrunning"
cp "$googleapis/google/longrunning/operations_proto.proto" "$lro/google/longrunning/operations.proto"
"$py" -m grpc_tools.protoc -Iprotos -I"$lro" -I"$googleapis" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  --include_source_info --include_imports --descriptor_set_out="$out/memoryd/v1/descriptor_set.binpb" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$py")/protoc-gen-mypy_grpc" --mypy_grpc_out="$out" \
  protos/memoryd/v1/*.proto
touch "$out/memoryd/v1/__init__.py"
