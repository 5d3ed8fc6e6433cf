"""Reports on a trained model: metrics, figures, tabular quality, the HTML report and the beta study."""
