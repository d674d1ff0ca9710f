"""The paper's case studies (section 2.6 and 3.1), run with the library's optimizers."""
