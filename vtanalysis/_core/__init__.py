"""Infrastructure the rest of the package stands on: scoped hooks (`scoped`), device copies
(`devices`), atomic files and fingerprints (`files`), processes under `accelerate launch`
(`processes`) and the dispatch / host round-trip counters (`perf`). Private: its paths may change;
`vtanalysis.perf` is the public name of the counters."""
