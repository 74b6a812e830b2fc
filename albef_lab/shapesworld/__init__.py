"""ShapesWorld, a synthetic world in which every ALBEF objective and task runs and learns on a CPU, and the recipe
that makes a tiny model learn it in minutes. The paper's core (models, objectives, engine) never imports this
package: the recipe reaches the engine through `RecipeConfig.plugins` (albef_lab/train/stages.py)."""

from albef_lab.shapesworld.config import RecipeConfig, finetune_config, load_config

__all__ = ["RecipeConfig", "finetune_config", "load_config"]
