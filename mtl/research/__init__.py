"""Research code the numbered notebooks share: model selection by CV (`select`), the comparison table and one
method's fit-and-predict (`compare`), adapted backbones (`adapt`), the external sets (`external`), bootstrap
intervals (`stats`) and low-label draws (`curves`). The notebooks show each experiment's steps; this is what
they would otherwise repeat."""
