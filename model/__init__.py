"""GRAD: grid-based continuous normal representation for unified anomaly detection.

The map, bottom to top; a subpackage imports only those before it (tests/test_architecture.py
enforces it), and nothing in `model` imports `worker` or `bench`:

    core        atomic file writes, the UTC clock, retry backoff
    net         the network: config registry, layers, GRAD head, refinement, scoring, backbone
    metrics     AUROC and AUPRO; per-class thresholds and confidence; drift from calibration
    data        images, MVTec layout, sample, URI roots and reader, recorded images, feature cache
    stores      blobs, artifacts, Redis state, SQL records, migrations, labels, store settings
    settings    the programs' settings (declared here, read once by a command)
    inference   the Inspector, checkpoint format, allocator, scoring graph, runtimes, parity,
                precisions and their approvals, int8 quantisation
    training    options, held-out split, fit, export, runs
    evaluation  the field's metrics on a test split, figures, the precision gate
    lifecycle   retraining window, selection, gate, promotion, the retraining's steps, report

The commands at the top (`train`, `evaluate`, `export`, `retrain`, `promote`, `label`,
`demo`) parse, read settings, call one library function and print. The numerical core
(`net`, `metrics`) is pure functions; files, stores and devices stay at the edges.
"""
