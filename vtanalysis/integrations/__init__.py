"""Plug-ins for other tools: `lmms` (an lmms-eval model, `lmms-eval --model vtanalysis`) and
`lmms_task` (the offline `vtanalysis-shapes` lmms-eval task). Each imports its tool when used."""
