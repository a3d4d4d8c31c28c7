"""Image captioning with visual attention (Xu et al. 2015) on the shared attention core."""
