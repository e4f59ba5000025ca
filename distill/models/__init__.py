"""LightningModules: the MAF teacher (maximum likelihood) and the IAF student (distillation)."""

from distill.models.student import StudentModule
from distill.models.teacher import TeacherModule

__all__ = ["StudentModule", "TeacherModule"]
