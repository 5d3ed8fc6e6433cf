"""Reports on a trained model: the evaluation report (report: splits, metrics, sections, html, plots),
the quality of sampled table rows (quality) and the beta study (study)."""
