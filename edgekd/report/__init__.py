"""Reports: report.json / report.md (core), HTML with plots, merging device reports.

`html`, `plots` and `merge` read report.json dicts only (numpy + matplotlib,
never torch), so a device report can be rendered or merged anywhere.
"""
