"""Robot-side video: capture sources, H.264 encoder selection and the video sender."""
