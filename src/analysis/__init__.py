"""The paper's figures and tables, computed only from stored runs (results/runs/, see docs/running.md).

One command per artefact, each `python -m analysis.<name> [--results results] [--out results/analysis]`:

    heatmap   Figure 2   NUDGING minus base score per pair and benchmark   figure2.csv, figure2.png/.pdf
    paradox   Figure 3   intervention rate vs score, correlations          paradox.csv, paradox_points.csv, figure3.*
    overlap   Figure 4 + Table 4   vocabulary overlap at consulted steps  overlap.csv, table4.csv, figure4.*
    tables    Tables 1, 2, 3, 5, 6 (+ 4 from overlap) with intervals and paired tests   tableN.csv/.md/.tex
    subset    a 100-sample subset against its full-set twin            subset_vs_full.csv, subset_vs_full.*
    calibration  alpha's premise on teacher-forced runs (method forced): ECE, accuracy of each choice at
              u < tau, AUROC of alpha, by token kind and position   calibration.csv, calibration_*.png/.md
    report    all of the above on one page, with the paper's values beside ours   results/report/index.html

Shared pieces: `load` (the only reader of the store), `select` (which runs an artefact uses; never
mixing settings or intervention units), `stats` (scipy-based statistics), `write` (CSV, Markdown,
LaTeX, figures), `labels` (display names), `paper` (the paper's published values, paper_values.csv).
"""
