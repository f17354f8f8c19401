"""rq workers: load MASENet once, batch image jobs, video chunks and Grad-CAM."""
