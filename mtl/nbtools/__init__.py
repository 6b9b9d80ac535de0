"""Notebook tooling: running the numbered notebooks headless (`run`) and handing nbval their checked outputs (`nbval_plugin`)."""
