"""The blind pairwise study of covers (user appeal, ICG, Bian et al., EMNLP 2025): design, store, app, results."""
