#!/usr/bin/env bash
# Prints DEVELOPER.md: docs/DEVELOPER.md.in with the line
# "<!-- program-map diagrams -->" replaced by the diagrams `ig image inspect`
# generates from the built gadget image.
# Usage: tools/gen-developer-md.sh IG IMAGE
set -euo pipefail
ig=$1
image=$2
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --auto-mount-filesystems: on a freshly booted machine tracefs and debugfs are
# not mounted, and inspect refuses to run without them.
diagram() {
	"$ig" image inspect "$image" --extra-info "$1" --verify-image=false --auto-mount-filesystems 2>/dev/null
}
flowchart=$(diagram ebpf.flowchart)
sequence=$(diagram ebpf.sequence)
[ -n "$flowchart" ] && [ -n "$sequence" ] || { echo "gen-developer-md: ig image inspect $image gave no diagrams" >&2; exit 1; }

while IFS= read -r line; do
	if [ "$line" = "<!-- program-map diagrams -->" ]; then
		cat <<MD
## Program-Map interactions

The following diagrams are generated from the built image by \`make diagrams\`
(\`ig image inspect IMAGE --extra-info ebpf.flowchart\` and \`ebpf.sequence\`).
They are a best-effort, static reading of the programs: conditionals are
ignored, and helpers other than map lookups, updates, deletes and perf output
(ring buffers, stack captures, \`bpf_find_vma\`) are not shown.

### Flowchart

\`\`\`mermaid
$flowchart
\`\`\`

### Sequence Diagram

\`\`\`mermaid
$sequence
\`\`\`
MD
	else
		printf '%s\n' "$line"
	fi
done <"$top/docs/DEVELOPER.md.in"
